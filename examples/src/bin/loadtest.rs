#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! `pindb-loadtest`: runs every consistency strategy back to back under the same load against
//! the dev cluster (`scripts/cluster up` first), with real replica lag, and reports throughput,
//! latency, replica offload, stale reads, consistency round trips and master CPU as a markdown
//! table, a JSON file and plots. `--backend mariadb` runs them on the MariaDB set instead
//! (every strategy but `lsn-round-trip`).
//!
//! `cargo run --release -p pindb-examples --bin pindb-loadtest -- --duration 60s`

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use pindb_examples::loadtest::{self, Backend, Settings, Strategy, Target};
use pindb_testkit::Cluster;

/// Load test of pindb's consistency strategies against the local primary + replicas.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The database set: PostgreSQL's primary and streaming replicas (replay paused for lag),
    /// or MariaDB's primary and GTID replicas (SQL threads stopped for lag; `lsn` and its
    /// variants by GTID sequence numbers; `lsn-round-trip` is refused there).
    #[arg(long, value_enum, default_value_t = Backend::Postgres)]
    backend: Backend,
    /// How long each strategy runs (`500ms`, `30s`, `2m`).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent simulated users.
    #[arg(long, default_value_t = 32)]
    users: usize,
    /// Share of iterations that write a row (the rest only list).
    #[arg(long, default_value_t = 0.1)]
    write_ratio: f64,
    /// Share of writes whose list runs in the same request (the rest: in the next request,
    /// like a POST/redirect/GET).
    #[arg(long, default_value_t = 0.3)]
    same_request: f64,
    /// Replay is paused (MariaDB: the SQL thread stopped) this long ...
    #[arg(long, default_value = "400ms", value_parser = parse_duration)]
    lag_pause: Duration,
    /// ... out of every period (pause = period: paused for the whole run).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    lag_period: Duration,
    /// Replicas whose replay (MariaDB: apply) lags (1, 2 or both: `1,2`).
    #[arg(long, default_value = "1", value_delimiter = ',')]
    lagging: Vec<usize>,
    /// Strategies to run, in order (default: all the backend supports).
    #[arg(long, value_enum, value_delimiter = ',')]
    strategies: Vec<Strategy>,
    /// Pool size per database alias.
    #[arg(long, default_value_t = 16)]
    pool_size: u32,
    /// Pause between a user's iterations.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    think: Duration,
    /// With a value above `--think`, each pause is drawn uniformly between the two.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    think_max: Duration,
    /// The scale mode: 1,000 users who think 1-5 s between requests (a write a few times a
    /// minute each), pools of 20; overrides `--users`, `--think`, `--think-max` and
    /// `--pool-size`.
    #[arg(long)]
    scale: bool,
    /// `stickiness.max_wait_ms` for the `lsn` strategies but `lsn-no-wait` (0: read from the
    /// master at once when no replica is known to have the user's last write; default:
    /// pindb's own, 5 ms).
    #[arg(long, value_parser = parse_duration)]
    max_wait: Option<Duration>,
    /// Inject faults into the `lsn` strategies while they run: requests cancelled or
    /// panicking right after their write, a private Redis restarted empty or frozen every
    /// 5-7 s (`lsn-redis`), 3 s position lifetimes.
    #[arg(long)]
    faults: bool,
    /// Draw the plots (and print the table) again from an earlier run's `result.json`,
    /// without running anything.
    #[arg(long)]
    replot: Option<PathBuf>,
    /// Where the JSON and the plots go.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected e.g. 500ms, 30s, 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{text}`: unit must be ms, s or m")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(json) = &args.replot {
        let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json)?)?;
        let outcomes: Vec<loadtest::Outcome> = serde_json::from_value(run["outcomes"].clone())?;
        println!("{}", loadtest::table(&outcomes));
        let dir = json.parent().unwrap_or(std::path::Path::new("."));
        println!("plots: {}", loadtest::plot(dir, &outcomes)?.join(", "));
        return Ok(());
    }
    let strategies = if args.strategies.is_empty() {
        Strategy::ALL
            .into_iter()
            .filter(|s| s.unsupported_on(args.backend).is_none())
            .collect()
    } else {
        args.strategies.clone()
    };
    for s in &strategies {
        if let Some(why) = s.unsupported_on(args.backend) {
            eprintln!(
                "error: --strategies {}: not supported with --backend {}: {why}",
                s.name(),
                args.backend.name()
            );
            std::process::exit(2);
        }
    }
    let mut settings = Settings {
        users: args.users,
        duration: args.duration,
        write_ratio: args.write_ratio,
        same_request_ratio: args.same_request,
        lag_pause: args.lag_pause,
        lag_period: args.lag_period,
        lagging_replicas: args.lagging.clone(),
        pool_size: args.pool_size,
        think: args.think,
        think_max: args.think_max,
        max_wait: args.max_wait,
        faults: args.faults,
    };
    if args.scale {
        settings.users = 1000;
        settings.think = Duration::from_secs(1);
        settings.think_max = Duration::from_secs(5);
        settings.pool_size = 20;
    }
    let mut target = Target::new(args.backend).await;
    let redis_url = Cluster::from_env().redis_url;
    let mut outcomes = Vec::new();
    for strategy in strategies {
        let bar = ProgressBar::new(settings.duration.as_millis() as u64);
        bar.set_style(ProgressStyle::with_template(
            "{prefix:>15} [{bar:40}] {elapsed}/{duration}",
        )?);
        bar.set_prefix(strategy.name());
        let ticker = bar.clone();
        let outcome = loadtest::run(&mut target, strategy, &settings, &redis_url, move |t| {
            ticker.set_position(t.as_millis() as u64)
        })
        .await?;
        bar.finish();
        outcomes.push(outcome);
    }
    target.finish().await;

    println!("\n{}:\n{}", args.backend.name(), loadtest::table(&outcomes));
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("result.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&serde_json::json!({
            "backend": args.backend,
            "settings": settings,
            "outcomes": outcomes
        }))?,
    )?;
    println!("numbers: {}", json.display());
    match loadtest::plot(&args.out, &outcomes) {
        Ok(files) => println!("plots: {}", files.join(", ")),
        Err(e) => println!("plots skipped: {e}"),
    }
    Ok(())
}
