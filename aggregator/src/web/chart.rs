//! An indicator's chart as inline SVG, drawn on the server with plotters: the city value of
//! every period (a line with one dot per period) against the straight path from the baseline
//! at the plan start to the target at its date (a thinner line). Nothing loads from elsewhere.

use plotters::prelude::*;

use crate::plan::Plan;
use crate::progress::{IndicatorProgress, end_of_day_ms, start_of_day_ms};

pub const VALUE_COLOUR: RGBColor = RGBColor(0x1f, 0x5f, 0xa8);
pub const PATH_COLOUR: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);

/// The chart, `width` × `height` pixels; an empty string when there is nothing to draw.
pub fn indicator_svg(
    plan: &Plan,
    progress: &IndicatorProgress,
    width: u32,
    height: u32,
    axes: bool,
) -> String {
    let start_ms = start_of_day_ms(plan.window.start, &plan.tz);
    let target = plan
        .indicator(&progress.indicator)
        .and_then(|i| i.target.as_ref());
    let end_ms = target
        .map(|t| end_of_day_ms(t.date, &plan.tz))
        .unwrap_or_else(|| end_of_day_ms(plan.window.end, &plan.tz))
        .max(progress.series.last().map_or(0, |p| p.end_ms));
    let path: Vec<(i64, f64)> = match (progress.baseline, progress.target, target) {
        (Some(b), Some(t), Some(_)) => vec![(start_ms, b), (end_ms, t)],
        _ => Vec::new(),
    };
    let points: Vec<(i64, f64)> = progress
        .series
        .iter()
        .map(|p| (p.end_ms, p.value))
        .collect();
    if points.is_empty() && path.is_empty() {
        return String::new();
    }
    let ys = points.iter().chain(&path).map(|(_, y)| *y);
    let (low, high) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    let pad = ((high - low).abs() * 0.1).max(high.abs() * 0.05).max(1e-9);
    let (low, high) = (low - pad, high + pad);
    let x_from = start_ms.min(points.first().map_or(start_ms, |p| p.0));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let margin = if axes { 10 } else { 3 };
        let mut builder = ChartBuilder::on(&root);
        builder.margin(margin);
        if axes {
            builder.x_label_area_size(28).y_label_area_size(56);
        }
        let Ok(mut chart) = builder.build_cartesian_2d(x_from..end_ms, low..high) else {
            return String::new();
        };
        if axes {
            let tz = plan.tz.clone();
            let _ = chart
                .configure_mesh()
                .x_labels(6)
                .y_labels(5)
                .x_label_formatter(&|ms: &i64| {
                    crate::progress::date_of_ms(*ms, &tz)
                        .strftime("%Y-%m")
                        .to_string()
                })
                .label_style(("sans-serif", 13))
                .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4))
                .light_line_style(TRANSPARENT)
                .draw();
        }
        if !path.is_empty() {
            let _ = chart.draw_series(LineSeries::new(path, PATH_COLOUR.stroke_width(1)));
        }
        let _ = chart.draw_series(LineSeries::new(
            points.clone(),
            VALUE_COLOUR.stroke_width(2),
        ));
        let radius = if axes { 4 } else { 2 };
        let _ = chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, radius, VALUE_COLOUR.filled())),
        );
        let _ = root.present();
    }
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::SeriesPoint;

    #[test]
    fn one_dot_per_period_and_nothing_for_an_empty_series() {
        let plan = crate::plan::embedded().plan;
        let indicator = &plan.indicators[0];
        let snapshot = crate::progress::Snapshot::default();
        let now = start_of_day_ms(plan.window.start, &plan.tz);
        let mut progress = crate::progress::compute(&plan, &snapshot, now)
            .indicators
            .into_iter()
            .find(|i| i.indicator == indicator.id)
            .unwrap();
        progress.baseline = None;
        assert_eq!(indicator_svg(&plan, &progress, 300, 100, false), "");
        progress.series = (0..3)
            .map(|k| SeriesPoint {
                period: format!("p{k}"),
                end_ms: now + k * 90 * crate::progress::DAY_MS,
                value: 10.0 + k as f64,
                expected: None,
            })
            .collect();
        for axes in [false, true] {
            let svg = indicator_svg(&plan, &progress, 600, 300, axes);
            assert!(svg.starts_with("<svg"), "{svg}");
            assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        }
    }
}
