//! PNG plots of a `bench serve` report, drawn with plotters' bitmap backend. The font
//! (DejaVu Sans, `runtime/assets/`) is compiled in, so plots render the same in a bare
//! container as on a desktop.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;

use crate::loadgen::Report;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const SIZE: (u32, u32) = (900, 520);

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlotError {
    pub path: PathBuf,
    pub message: String,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF compiled into the binary; a failure would show as
        // missing text, which the tests would catch by the image being blank of it.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One named line of (x, y) points.
struct Series<'a> {
    name: &'a str,
    points: Vec<(f64, f64)>,
}

fn upper(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0f64, f64::max);
    if max > 0.0 {
        max * 1.1
    } else {
        1.0
    }
}

fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series<'_>],
    markers: bool,
    legend: SeriesLabelPosition,
) -> Result<(), PlotError> {
    let err = |e: String| PlotError {
        path: path.to_path_buf(),
        message: e,
    };
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_min = xs.clone().fold(f64::INFINITY, f64::min);
    let x_max = xs.fold(f64::NEG_INFINITY, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max)
    } else {
        (0.0, x_max.max(1.0) + 1.0)
    };
    let y_max = upper(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if markers {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// Writes `throughput.png`, `latency.png` and `ttft.png` into `dir`; returns their paths.
pub fn write_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    register_font();
    std::fs::create_dir_all(dir).map_err(|e| PlotError {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let levels = &report.levels;
    let by_level = |f: fn(&crate::loadgen::LevelReport) -> f64| -> Vec<(f64, f64)> {
        levels
            .iter()
            .map(|l| (l.concurrency as f64, f(l)))
            .collect()
    };
    let throughput = dir.join("throughput.png");
    line_chart(
        &throughput,
        &format!("Throughput vs concurrency ({})", report.model),
        "concurrent requests",
        "per second",
        &[
            Series {
                name: "output tokens/s",
                points: by_level(|l| l.output_token_throughput),
            },
            Series {
                name: "requests/s x 10",
                points: by_level(|l| l.request_throughput * 10.0),
            },
        ],
        true,
        SeriesLabelPosition::UpperLeft,
    )?;
    let latency = dir.join("latency.png");
    line_chart(
        &latency,
        "Latency percentiles vs concurrency",
        "concurrent requests",
        "milliseconds",
        &[
            Series {
                name: "end-to-end p95",
                points: by_level(|l| l.e2e_ms.p95),
            },
            Series {
                name: "end-to-end p99",
                points: by_level(|l| l.e2e_ms.p99),
            },
            Series {
                name: "TTFT p95",
                points: by_level(|l| l.ttft_ms.p95),
            },
            Series {
                name: "TTFT p99",
                points: by_level(|l| l.ttft_ms.p99),
            },
        ],
        true,
        SeriesLabelPosition::UpperLeft,
    )?;
    // The TTFT distribution as one empirical CDF per level.
    let names: Vec<String> = levels
        .iter()
        .map(|l| format!("concurrency {}", l.concurrency))
        .collect();
    let cdfs: Vec<Series<'_>> = levels
        .iter()
        .zip(&names)
        .map(|(l, name)| {
            let mut v = l.ttft_samples_ms.clone();
            v.sort_by(f64::total_cmp);
            let n = v.len().max(1) as f64;
            Series {
                name,
                points: v
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| (t, (i + 1) as f64 / n * 100.0))
                    .collect(),
            }
        })
        .collect();
    let ttft = dir.join("ttft.png");
    line_chart(
        &ttft,
        "Time to first token: distribution (CDF)",
        "TTFT (ms)",
        "% of requests at or below",
        &cdfs,
        false,
        SeriesLabelPosition::LowerRight,
    )?;
    Ok(vec![throughput, latency, ttft])
}
