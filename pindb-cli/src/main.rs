//! `pindb`: the topology and replication of a pindb config, from the command line.
//!
//! - `pindb status [--config pindb.toml] [--json]`: one line per database (alias, role, kind,
//!   up/down, lag, position, WAL retained by the primary's replication slots, the tables a
//!   logical replica's publications carry).
//! - `pindb check [--config pindb.toml]`: the topology check (every master a primary, every
//!   replica a standby of its master); exits 1 with the reason when it is wrong, 2 when the
//!   config cannot be read.
//!
//! Without `--config`, the file named by `PINDB_CONFIG` is read, else `pindb.toml`. The config
//! is read as the service reads it (`Config::load`: `PINDB_URL_<ALIAS>` overrides
//! apply).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pindb_core::{Config, DatabaseStatus, Router};

#[derive(Debug, Parser)]
#[command(
    name = "pindb",
    version,
    about = "The topology and replication of a pindb config"
)]
struct Cli {
    /// The config file (`scripts/cluster env` exports the dev cluster's as PINDB_CONFIG).
    #[arg(
        long,
        global = true,
        env = "PINDB_CONFIG",
        default_value = "pindb.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints every database: role, up/down, lag, position, retained WAL.
    Status {
        /// JSON instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Checks the topology; exits non-zero with the reason when it is wrong.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pindb: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pindb: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let router = match Router::new(config) {
            Ok(router) => router,
            Err(e) => {
                eprintln!("pindb: {e}");
                return ExitCode::from(2);
            }
        };
        match cli.command {
            Command::Status { json } => {
                let status = router.status().await;
                if json {
                    match serde_json::to_string_pretty(&status) {
                        Ok(text) => println!("{text}"),
                        Err(e) => {
                            eprintln!("pindb: {e}");
                            return ExitCode::from(2);
                        }
                    }
                } else {
                    print!("{}", table(&status));
                }
                if status.iter().all(|s| s.up) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Command::Check => match router.check_topology().await {
                Ok(warnings) if warnings.is_empty() => {
                    println!("topology ok");
                    ExitCode::SUCCESS
                }
                Ok(warnings) => {
                    for w in warnings {
                        println!("warning: {w}");
                    }
                    ExitCode::from(1)
                }
                Err(e) => {
                    println!("topology wrong: {e}");
                    ExitCode::from(1)
                }
            },
        }
    })
}

/// The status as an aligned text table.
fn table(status: &[DatabaseStatus]) -> String {
    let header = [
        "alias",
        "role",
        "kind",
        "state",
        "lag bytes",
        "lag ms",
        "position",
        "retained WAL",
        "published",
    ];
    let rows: Vec<[String; 9]> = status
        .iter()
        .map(|s| {
            let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            let retained: u64 = s.slots.iter().map(|slot| slot.retained_bytes).sum();
            [
                s.alias.clone(),
                s.role.to_owned(),
                if s.kind.is_empty() {
                    "-".to_owned()
                } else {
                    s.kind.to_owned()
                },
                match (&s.error, s.up) {
                    (None, _) => "up".to_owned(),
                    (Some(e), true) => format!("up ({e})"),
                    (Some(e), false) if e.starts_with("wrong role") => e.clone(),
                    (Some(e), false) => format!("down ({e})"),
                },
                opt(s.lag_bytes),
                // A lower bound in one word (`>=500`), so the column stays one token.
                match s.lag_ms {
                    Some(ms) if s.lag_ms_at_least => format!(">={ms}"),
                    lag => opt(lag),
                },
                s.position.clone().unwrap_or_else(|| "-".to_owned()),
                if s.role == "master" && s.up {
                    format!("{retained} ({} slots)", s.slots.len())
                } else {
                    "-".to_owned()
                },
                if s.published.is_empty() {
                    "-".to_owned()
                } else {
                    s.published.join(",")
                },
            ]
        })
        .collect();
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(&header.map(str::to_owned));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}
