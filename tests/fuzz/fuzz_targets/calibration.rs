//! A calibration file for the shipped SPAN x4, and the integer layers planned from it.
#![no_main]

use std::path::Path;
#[path = "span_x4.rs"]
mod span_x4;

use span_x4::graph;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = refqsr::quant::Calibration::parse(text, Path::new("c.json"), graph()) {
        let mode = refqsr::quant::Mode::Uniform { w: 4, a: 4 };
        let _ = refqsr::quant::int_layers(graph(), mode, &c, refqsr::quant::Bounds::Searched);
    }
});
