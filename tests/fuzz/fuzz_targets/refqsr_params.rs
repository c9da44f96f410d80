//! RefQSR parameters (ClustBlock and RefER) for the shipped SPAN x4.
#![no_main]

use std::path::Path;
#[path = "span_x4.rs"]
mod span_x4;

use span_x4::graph;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = refqsr::refqsr::Params::parse(text, Path::new("p.json"), graph());
});
