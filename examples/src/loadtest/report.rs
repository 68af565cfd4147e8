//! A run's report: the markdown table and the plots (PNG and SVG).

use std::path::Path;

use plotters::prelude::*;

use super::run::Outcome;

/// The markdown table of a run.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| strategy | req/s | decisions/s | p50 ms | p95 ms | p99 ms | p99 ms, no write just before | writing requests p50/p99 ms | master round trips per writing request | pindb p50/p99 µs | reads on replicas | oracle (strict-generous) | of oracle | stale reads | consistency round trips / 1k reads (master + replica) | master CPU ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}/{:.2} | {:.2} | {:.0}/{:.0} | {:.1}% | {:.1}-{:.1}% | {:.3}-{:.3} | {} | {:.1} + {:.1} | {} |\n",
            o.strategy.name(),
            o.throughput,
            o.decisions_per_second,
            o.p50_ms,
            o.p95_ms,
            o.p99_ms,
            o.quiet_p99_ms,
            o.writer_p50_ms,
            o.writer_p99_ms,
            o.master_round_trips_per_write,
            o.pindb_p50_us,
            o.pindb_p99_us,
            o.replica_share * 100.0,
            o.strict_oracle_share * 100.0,
            o.oracle_share * 100.0,
            fraction(o.replica_share, o.oracle_share),
            fraction(o.replica_share, o.strict_oracle_share),
            o.stale_reads,
            o.master_round_trips_per_1000_reads,
            o.round_trips_per_1000_reads - o.master_round_trips_per_1000_reads,
            o.master_cpu_ms.map_or("n/a".to_owned(), |c| c.to_string()),
        ));
    }
    out
}

fn fraction(share: f64, of: f64) -> f64 {
    if of > 0.0 {
        share / of
    } else {
        0.0
    }
}

type Chart = Result<(), Box<dyn std::error::Error>>;

/// Draws the three charts as PNG and SVG; returns the file names.
pub fn plot(dir: &Path, outcomes: &[Outcome]) -> Result<Vec<String>, Box<dyn std::error::Error>> {
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

/// Replica share of reads (x) against stale reads (y), one point per strategy, named in a
/// legend (labels next to the points overlapped where strategies agree).
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
        // A margin on both sides: points at 0% and 100% stay whole.
        .build_cartesian_2d(-4f64..104f64, -max_stale * 0.04..max_stale)?;
    chart
        .configure_mesh()
        .x_desc("reads served by replicas (%)")
        .y_desc("stale reads")
        .draw()?;
    for (i, x) in o.iter().enumerate() {
        let point = (x.replica_share * 100.0, x.stale_reads as f64);
        let c = color(i);
        chart
            .draw_series([Circle::new(point, 6, c.filled())])?
            .label(format!(
                "{} ({:.1}%, {} stale)",
                x.strategy.name(),
                point.0,
                x.stale_reads
            ))
            .legend(move |(a, b)| Circle::new((a + 8, b), 5, c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
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
        .caption(
            "request latency (ms): p50, p95, p99 per strategy",
            ("sans-serif", 24),
        )
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
        // The name under its bars, below the axis (inside the plot it collided with the
        // neighbours' names and the tallest bars).
        let (px, py) = chart.backend_coord(&(base + 2.0, 0.0));
        let style = TextStyle::from(("sans-serif", 12).into_font()).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            ),
        );
        root.draw(&Text::new(
            x.strategy.name().to_string(),
            (px, py + 6 + 14 * (i as i32 % 2)),
            style,
        ))?;
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
