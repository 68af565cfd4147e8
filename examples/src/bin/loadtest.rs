//! `pindb-loadtest`: runs every consistency strategy back to back under the same load against
//! the dev cluster (`scripts/cluster up` first), with real replica lag, and reports throughput,
//! latency, replica offload, stale reads, consistency round trips and master CPU as a markdown
//! table, a JSON file and plots.
//!
//! `cargo run --release -p pindb-examples --bin pindb-loadtest -- --duration 60s`

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use pindb_examples::loadtest::{self, Outcome, Settings, Strategy};
use pindb_testkit::{Cluster, Fixture};
use plotters::prelude::*;

/// Load test of pindb's consistency strategies against the local primary + replicas.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
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
    /// Replay is paused this long ...
    #[arg(long, default_value = "400ms", value_parser = parse_duration)]
    lag_pause: Duration,
    /// ... out of every period (pause = period: paused for the whole run).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    lag_period: Duration,
    /// Replicas whose replay lags (1, 2 or both: `1,2`).
    #[arg(long, default_value = "1", value_delimiter = ',')]
    lagging: Vec<usize>,
    /// Strategies to run, in order (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    strategies: Vec<Strategy>,
    /// Pool size per database alias.
    #[arg(long, default_value_t = 16)]
    pool_size: u32,
    /// Pause between a user's iterations.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    think: Duration,
    /// Inject faults into the `lsn` strategies while they run: requests cancelled or
    /// panicking right after their write, a private Redis restarted empty or frozen every
    /// 5-7 s (`lsn-redis`), 3 s position lifetimes.
    #[arg(long)]
    faults: bool,
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
    let strategies = if args.strategies.is_empty() {
        Strategy::ALL.to_vec()
    } else {
        args.strategies.clone()
    };
    let settings = Settings {
        users: args.users,
        duration: args.duration,
        write_ratio: args.write_ratio,
        same_request_ratio: args.same_request,
        lag_pause: args.lag_pause,
        lag_period: args.lag_period,
        lagging_replicas: args.lagging.clone(),
        pool_size: args.pool_size,
        think: args.think,
        faults: args.faults,
    };
    let mut fixture = Fixture::new(loadtest::SCHEMA_SQL).await;
    let redis_url = Cluster::from_env().redis_url;
    let mut outcomes = Vec::new();
    for strategy in strategies {
        let bar = ProgressBar::new(settings.duration.as_millis() as u64);
        bar.set_style(ProgressStyle::with_template(
            "{prefix:>15} [{bar:40}] {elapsed}/{duration}",
        )?);
        bar.set_prefix(strategy.name());
        let ticker = bar.clone();
        let outcome = loadtest::run(&mut fixture, strategy, &settings, &redis_url, move |t| {
            ticker.set_position(t.as_millis() as u64)
        })
        .await?;
        bar.finish();
        outcomes.push(outcome);
    }
    fixture.finish().await;

    println!("\n{}", loadtest::table(&outcomes));
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("result.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(
            &serde_json::json!({ "settings": settings, "outcomes": outcomes }),
        )?,
    )?;
    println!("numbers: {}", json.display());
    match plot(&args.out, &outcomes) {
        Ok(files) => println!("plots: {}", files.join(", ")),
        Err(e) => println!("plots skipped: {e}"),
    }
    Ok(())
}

type Chart = Result<(), Box<dyn std::error::Error>>;

/// Draws the three charts as PNG and SVG; returns the file names.
fn plot(dir: &Path, outcomes: &[Outcome]) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .ok_or("no DejaVu Sans font found (apt-get install fonts-dejavu-core)")?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| "the font does not load")?;
    let mut files = Vec::new();
    for name in ["offload_vs_stale", "latency", "throughput"] {
        let png = dir.join(format!("{name}.png"));
        let svg = dir.join(format!("{name}.svg"));
        let size = (900, 520);
        draw(
            name,
            &BitMapBackend::new(&png, size).into_drawing_area(),
            outcomes,
        )?;
        draw(
            name,
            &SVGBackend::new(&svg, size).into_drawing_area(),
            outcomes,
        )?;
        files.push(png.display().to_string());
        files.push(svg.display().to_string());
    }
    Ok(files)
}

fn draw<DB: DrawingBackend>(
    name: &str,
    root: &DrawingArea<DB, plotters::coord::Shift>,
    o: &[Outcome],
) -> Chart
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    match name {
        "offload_vs_stale" => offload_vs_stale(root, o)?,
        "latency" => latency(root, o)?,
        _ => throughput(root, o)?,
    }
    root.present()?;
    Ok(())
}

fn color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
    RGBColor(r, g, b)
}

/// Replica share of reads (x) against stale reads (y), one labelled point per strategy.
fn offload_vs_stale<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    o: &[Outcome],
) -> Chart
where
    DB::ErrorType: 'static,
{
    let max_stale = o.iter().map(|x| x.stale_reads).max().unwrap_or(0).max(1) as f64 * 1.15;
    let mut chart = ChartBuilder::on(root)
        .caption("reads on replicas vs. stale reads", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..100f64, 0f64..max_stale)?;
    chart
        .configure_mesh()
        .x_desc("reads served by replicas (%)")
        .y_desc("stale reads")
        .draw()?;
    for (i, x) in o.iter().enumerate() {
        let point = (x.replica_share * 100.0, x.stale_reads as f64);
        chart.draw_series([Circle::new(point, 6, color(i).filled())])?;
        chart.draw_series([Text::new(
            x.strategy.name().to_string(),
            (
                point.0 + 1.0,
                point.1 + max_stale * 0.02 * (1 + i % 3) as f64,
            ),
            ("sans-serif", 14),
        )])?;
    }
    Ok(())
}

/// p50 / p95 / p99 per strategy.
fn latency<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    o: &[Outcome],
) -> Chart
where
    DB::ErrorType: 'static,
{
    let max = o.iter().map(|x| x.p99_ms).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption("request latency percentiles (ms)", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(o.len() as f64 * 4.0), 0f64..max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("ms")
        .draw()?;
    for (i, x) in o.iter().enumerate() {
        let base = i as f64 * 4.0;
        for (k, (v, shade)) in [(x.p50_ms, 0.9), (x.p95_ms, 0.6), (x.p99_ms, 0.3)]
            .into_iter()
            .enumerate()
        {
            let left = base + 0.5 + k as f64;
            chart.draw_series([Rectangle::new(
                [(left, 0.0), (left + 0.9, v)],
                color(i).mix(shade).filled(),
            )])?;
        }
        chart.draw_series([Text::new(
            x.strategy.name().to_string(),
            (base + 0.3, max * 0.97),
            ("sans-serif", 13),
        )])?;
    }
    Ok(())
}

/// Requests per second over time, one line per strategy.
fn throughput<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    o: &[Outcome],
) -> Chart
where
    DB::ErrorType: 'static,
{
    let secs = o
        .iter()
        .map(|x| x.per_second.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let max = o
        .iter()
        .flat_map(|x| x.per_second.iter().copied())
        .max()
        .unwrap_or(1) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption("throughput over time (requests / s)", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..secs as f64, 0f64..max)?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc("requests")
        .draw()?;
    for (i, x) in o.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                x.per_second
                    .iter()
                    .enumerate()
                    .map(|(s, n)| (s as f64, *n as f64)),
                &c,
            ))?
            .label(x.strategy.name())
            .legend(move |(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
