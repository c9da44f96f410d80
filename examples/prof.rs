fn main() {
    let g = refqsr::upscaler::load_graph(None, Some(4)).unwrap();
    let ctx = refqsr::gpu::Context::new(None).unwrap();
    let m = refqsr::exec::GpuModel::new(ctx, g).unwrap();
    let p = m.plan(1, 298, 298).unwrap();
    p.execute().unwrap();
    let mut tot = 0.0;
    for (l, t) in p.profile().unwrap() {
        println!("{t:8.1} ms  {l}");
        tot += t;
    }
    println!("{tot:8.1} ms total");
}
