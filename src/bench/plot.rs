//! `--plot`: the modes side by side per adapter (and per peer), one panel per input size, as an
//! SVG drawn with plotters.

use std::path::Path;

use plotters::prelude::*;

use super::record::Record;
use crate::error::{Error, Result};

/// Colours of the modes, in order of first appearance (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(225, 87, 89),
    RGBColor(118, 183, 178),
    RGBColor(89, 161, 79),
    RGBColor(237, 201, 72),
    RGBColor(176, 122, 161),
    RGBColor(255, 157, 167),
    RGBColor(156, 117, 95),
    RGBColor(186, 176, 172),
];

/// Where a record goes on the x axis: its tool and device.
fn group(r: &Record) -> String {
    format!("{} on {} ({})", r.tool, r.adapter.name, r.adapter.backend)
}

fn first_seen<T: PartialEq + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Draw median latency (bars, ms) of `records`: a panel per size, a group of bars per device,
/// a bar per mode.
pub fn plot(records: &[Record], path: &Path) -> Result<()> {
    if records.is_empty() {
        return Err(Error::Invalid("nothing to plot".into()));
    }
    let sizes = first_seen(records.iter().map(|r| (r.width, r.height, r.scale)));
    let modes = first_seen(records.iter().map(|r| r.mode.clone()));
    let fail = |e: &dyn std::fmt::Display| Error::Invalid(format!("{}: {e}", path.display()));
    let panel_h = 360;
    let root = SVGBackend::new(path, (960, panel_h * sizes.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let panels = root.split_evenly((sizes.len(), 1));
    for (panel, &(w, h, scale)) in panels.iter().zip(&sizes) {
        let rows: Vec<&Record> = records
            .iter()
            .filter(|r| (r.width, r.height, r.scale) == (w, h, scale))
            .collect();
        let groups = first_seen(rows.iter().map(|r| group(r)));
        let here: Vec<&String> = modes
            .iter()
            .filter(|m| rows.iter().any(|r| &r.mode == *m))
            .collect();
        let top = rows.iter().map(|r| r.max_ms).fold(0.0, f64::max) * 1.45; // headroom for the legend
        let n = groups.len();
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{} x{scale}, {w}x{h} input: median ms (whisker: min-max)",
                    rows[0].model
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0.5f64..n as f64 + 0.5, 0f64..top.max(1e-3))
            .map_err(|e| fail(&e))?;
        let names = groups.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .x_label_formatter(&|x| {
                let g = x.round();
                if (x - g).abs() < 1e-6 && g >= 1.0 {
                    names.get(g as usize - 1).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_desc("ms")
            .draw()
            .map_err(|e| fail(&e))?;
        // a bar per mode within each group, as wide as the group's own count of modes allows
        let place = |r: &Record| {
            let g = groups.iter().position(|x| *x == group(r)).expect("grouped");
            let mine = first_seen(
                rows.iter()
                    .filter(|o| group(o) == groups[g])
                    .map(|o| &o.mode),
            );
            let slot = 0.8 / mine.len() as f64;
            let k = mine.iter().position(|m| *m == &r.mode).expect("listed");
            (g as f64 + 1.0 - 0.4 + k as f64 * slot, slot)
        };
        for mode in &here {
            let colour =
                PALETTE[modes.iter().position(|m| m == *mode).unwrap_or(0) % PALETTE.len()];
            let bars: Vec<(f64, f64, &Record)> = rows
                .iter()
                .filter(|r| &&r.mode == mode)
                .map(|r| {
                    let (x, slot) = place(r);
                    (x, slot, *r)
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|&(x, slot, r)| {
                    Rectangle::new([(x, 0.0), (x + slot * 0.9, r.median_ms)], colour.filled())
                }))
                .map_err(|e| fail(&e))?
                .label(mode.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
            chart
                .draw_series(bars.iter().map(|&(x, slot, r)| {
                    let c = x + slot * 0.45;
                    PathElement::new(vec![(c, r.min_ms), (c, r.max_ms)], BLACK.stroke_width(1))
                }))
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(bars.iter().map(|&(x, _, r)| {
                    Text::new(
                        format!("{:.0}", r.median_ms),
                        (x, r.max_ms.max(r.median_ms) + top * 0.02),
                        ("sans-serif", 11),
                    )
                }))
                .map_err(|e| fail(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
