//! RefQSR parameters (ClustBlock and RefER) for the shipped SPAN x4.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use refqsr::model::Graph;

fn graph() -> &'static Graph {
    static G: OnceLock<Graph> = OnceLock::new();
    G.get_or_init(|| {
        refqsr::quant::prepare(refqsr::upscaler::load_graph(None, Some(4)).expect("shipped model"))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = refqsr::refqsr::Params::parse(text, Path::new("p.json"), graph());
});
