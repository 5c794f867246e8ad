//! The report's plots, as inline SVG drawn with plotters: text stays text,
//! so the page needs no fonts or scripts of its own.

use plotters::prelude::*;

/// The colour of every aggregate bar (the report's tests look for it).
pub const BAR: RGBColor = RGBColor(31, 119, 180);
const REJECTED: RGBColor = RGBColor(214, 39, 40);

const WIDTH: u32 = 960;
const HEIGHT: u32 = 280;

/// A bar per bucket of `aggregate`. A long vector keeps a bar per bucket
/// (the shape stays visible); the page lists its largest buckets beside it.
pub fn aggregate_bars(aggregate: &[u128]) -> Result<String, ChartError> {
    let max = aggregate.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..aggregate.len().max(1) as f64, 0f64..max * 1.05)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("bucket")
            .y_desc("sum")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(drawing)?;
        // Bars a pixel or less wide draw without gaps.
        let gap = if aggregate.len() > 200 { 0.0 } else { 0.15 };
        chart
            .draw_series(aggregate.iter().enumerate().map(|(i, &v)| {
                let x = i as f64;
                Rectangle::new([(x + gap, 0.0), (x + 1.0 - gap, v as f64)], BAR.filled())
            }))
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// Reports aggregated and rejected per date, for a date range.
pub fn trend(dates: &[String], aggregated: &[u64], rejected: &[u64]) -> Result<String, ChartError> {
    let max = aggregated
        .iter()
        .chain(rejected)
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let last = dates.len().saturating_sub(1).max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..last, 0f64..max * 1.1)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_labels(dates.len().min(12))
            .x_label_formatter(&|x| dates.get(x.round() as usize).cloned().unwrap_or_default())
            .y_desc("reports")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(drawing)?;
        for (values, colour, label) in [
            (aggregated, BAR, "aggregated"),
            (rejected, REJECTED, "rejected"),
        ] {
            let points = values
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as f64, v as f64));
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(drawing)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(points.map(|p| Circle::new(p, 3, colour.filled())))
                .map_err(drawing)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// What plotters said when a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing a chart: {0}")]
pub struct ChartError(String);

fn drawing(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}
