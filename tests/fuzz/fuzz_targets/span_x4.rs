//! The shipped SPAN x4 as the integer modes prepare it, shared by the JSON targets.

use std::sync::OnceLock;

use refqsr::model::Graph;

pub fn graph() -> &'static Graph {
    static G: OnceLock<Graph> = OnceLock::new();
    G.get_or_init(|| {
        refqsr::quant::prepare(refqsr::upscaler::load_graph(None, Some(4)).expect("shipped model"))
    })
}
