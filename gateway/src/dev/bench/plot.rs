//! The picture of a `hark bench` run, as SVG: voice-to-voice latency and barge-in delay CDFs per
//! step, and server CPU and memory against the number of calls.
//!
//! Drawn with plotters' SVG backend, which writes text as SVG `<text>` elements (the viewer
//! picks the font): no font files, fontconfig or other system libraries are needed.

use std::path::Path;

use plotters::prelude::*;

use super::{BenchError, BenchResults};

/// Size of the picture, px.
pub const SIZE: (u32, u32) = (1200, 900);

fn plot_err(path: &Path) -> impl Fn(String) -> BenchError + '_ {
    move |message| BenchError::Output {
        path: path.to_path_buf(),
        message,
    }
}

/// Draws `r` into an SVG file at `path` (overwritten).
///
/// # Errors
/// [`BenchError::Output`] if the file cannot be written.
pub fn write_svg(r: &BenchResults, path: &Path) -> Result<(), BenchError> {
    let err = plot_err(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let title = format!(
        "hark bench — {} agent, {}, {} cores",
        match r.agent {
            super::BenchAgent::Echo => "echo",
            super::BenchAgent::Cascade => "cascade",
        },
        r.mode,
        r.machine.cores
    );
    let root = root
        .titled(&title, ("sans-serif", 22))
        .map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((2, 2));
    let steps: Vec<(String, &Vec<f64>, &Vec<f64>)> = r
        .steps
        .iter()
        .map(|s| {
            (
                format!(
                    "N={}{}",
                    s.calls,
                    if s.meets_service_level {
                        ""
                    } else {
                        " (missed)"
                    }
                ),
                &s.cdf.voice_to_voice_ms,
                &s.cdf.barge_in_ms,
            )
        })
        .collect();
    cdf(
        &panels[0],
        "Voice-to-voice: caller stops → hears the answer",
        steps.iter().map(|(l, v, _)| (l.as_str(), v.as_slice())),
        None,
    )
    .map_err(&err)?;
    cdf(
        &panels[1],
        "Barge-in: first voiced frame → clear at the phone",
        steps.iter().map(|(l, _, b)| (l.as_str(), b.as_slice())),
        Some(r.service_level.barge_in_p99_ms),
    )
    .map_err(&err)?;
    cpu(&panels[2], r).map_err(&err)?;
    memory(&panels[3], r).map_err(&err)?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn err(x: &dyn std::fmt::Display) -> String {
    x.to_string()
}

/// A panel with `caption` and these axis ranges, laid out like the others.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> Result<Chart<'a, 'b>, String> {
    ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(38)
        .y_label_area_size(48)
        .build_cartesian_2d(x, y)
        .map_err(|x| err(&x))
}

/// The panel's legend box at `pos`.
fn legend<'b: 'a, 'a>(chart: &mut Chart<'a, 'b>, pos: SeriesLabelPosition) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|x| err(&x))
}

/// One CDF panel: a line per step (x: ms, y: fraction of samples ≤ x); `limit` draws a dashed
/// vertical line (the service level).
fn cdf<'s>(
    area: &Area<'_>,
    title: &str,
    series: impl Iterator<Item = (&'s str, &'s [f64])> + Clone,
    limit: Option<f64>,
) -> Result<(), String> {
    let (lo, hi) = series
        .clone()
        .filter(|(_, v)| !v.is_empty())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(v[0]), hi.max(v[v.len() - 1]))
        });
    let (lo, hi) = if lo.is_finite() {
        let hi = limit.map_or(hi, |l| hi.max(l * 1.05));
        let pad = ((hi - lo) * 0.05).max(1.0);
        ((lo - pad).max(0.0), hi + pad)
    } else {
        (0.0, limit.unwrap_or(1000.0) * 1.2)
    };
    let mut chart = panel(area, title, lo..hi, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("fraction ≤ x")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|x| err(&x))?;
    for (i, (label, v)) in series.enumerate() {
        if v.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        let n = v.len() - 1;
        chart
            .draw_series(LineSeries::new(
                v.iter()
                    .enumerate()
                    .map(|(k, &x)| (x, k as f64 / n.max(1) as f64)),
                color.stroke_width(2),
            ))
            .map_err(|x| err(&x))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    if let Some(l) = limit {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(l, 0.0), (l, 1.0)],
                6,
                4,
                RED.stroke_width(1),
            ))
            .map_err(|x| err(&x))?
            .label(format!("service level {l:.0} ms"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

/// Server and simulator CPU (% of one core) against N.
fn cpu(area: &Area<'_>, r: &BenchResults) -> Result<(), String> {
    let server: Vec<(f64, f64)> = r
        .steps
        .iter()
        .filter_map(|s| s.server_cpu_pct.map(|c| (s.calls as f64, c)))
        .collect();
    let client: Vec<(f64, f64)> = r
        .steps
        .iter()
        .filter_map(|s| s.client_cpu_pct.map(|c| (s.calls as f64, c)))
        .collect();
    let max_n = r.steps.iter().map(|s| s.calls).max().unwrap_or(1) as f64;
    let cores = 100.0 * r.machine.cores as f64;
    let top = server
        .iter()
        .chain(&client)
        .map(|p| p.1)
        .fold(0.0, f64::max);
    // Show the machine's capacity when the data comes near it; else zoom to the data.
    let max_y = if top > cores * 0.4 {
        top.max(cores)
    } else {
        (top * 1.3).max(10.0)
    };
    let mut chart = panel(
        area,
        "CPU against concurrent calls",
        0f64..max_n * 1.08,
        0f64..max_y * 1.05,
    )?;
    chart
        .configure_mesh()
        .x_desc("concurrent calls (N)")
        .y_desc("% of one core")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|x| err(&x))?;
    if cores <= max_y {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, cores), (max_n * 1.08, cores)],
                6,
                4,
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(|x| err(&x))?
            .label(format!("all {} cores", r.machine.cores))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.5)));
    }
    for (data, color, label) in [
        (&server, BLUE, "server (hark)"),
        (&client, GREEN, "simulator (hark bench)"),
    ] {
        if data.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
            .map_err(|x| err(&x))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(data.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|x| err(&x))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// Peak RSS above idle (MiB) against N.
fn memory(area: &Area<'_>, r: &BenchResults) -> Result<(), String> {
    let data: Vec<(f64, f64)> = r
        .steps
        .iter()
        .filter_map(|s| {
            s.rss_per_call_kib
                .map(|k| (s.calls as f64, k * s.calls as f64 / 1024.0))
        })
        .collect();
    let max_n = r.steps.iter().map(|s| s.calls).max().unwrap_or(1) as f64;
    let max_y = data.iter().map(|p| p.1).fold(1.0, f64::max);
    let per_call = r
        .steps
        .iter()
        .rev()
        .find_map(|s| s.rss_per_call_kib.map(|k| (s.calls, k)));
    let mut chart = panel(
        area,
        &format!("Memory against concurrent calls ({})", r.rss_scope),
        0f64..max_n * 1.08,
        0f64..max_y * 1.15,
    )?;
    chart
        .configure_mesh()
        .x_desc("concurrent calls (N)")
        .y_desc("peak RSS above idle, MiB")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|x| err(&x))?;
    if !data.is_empty() {
        let label = per_call.map_or_else(
            || "RSS".to_string(),
            |(n, k)| format!("RSS above idle ({k:.0} KiB per call at N={n})"),
        );
        chart
            .draw_series(LineSeries::new(
                data.iter().copied(),
                MAGENTA.stroke_width(2),
            ))
            .map_err(|x| err(&x))?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], MAGENTA.stroke_width(2)));
        chart
            .draw_series(data.iter().map(|&p| Circle::new(p, 4, MAGENTA.filled())))
            .map_err(|x| err(&x))?;
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    Ok(())
}
