//! Time the whole upscale of a centre crop of an image (upload to download, tiling and host
//! conversions included), as the ncnn comparison in benches/RESULTS.md does:
//! `cargo bench --bench model -- [IMG] [WxH] [RUNS] [MODEL.param]`.

use std::time::Instant;

use refqsr::{Options, Upscaler};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // cargo bench adds `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let path = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("assets/images/astronaut.png");
    let size = args.get(2).map(String::as_str).unwrap_or("256x256");
    let runs: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let (w, h) = size.split_once('x').ok_or("size is WxH")?;
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    let img = image::open(path)?.to_rgb32f();
    let (x, y) = (
        (img.width().saturating_sub(w)) / 2,
        (img.height().saturating_sub(h)) / 2,
    );
    let crop = image::imageops::crop_imm(&img, x, y, w, h).to_image();
    let opts = Options {
        model: args.get(4).map(Into::into),
        ..Options::default()
    };
    let up = Upscaler::new(&opts)?;
    eprintln!("{} on {}", up.graph().name, up.context().describe());
    eprintln!(
        "tile {} halo {}",
        up.tile_size(w as usize, h as usize)?,
        up.halo()
    );
    up.upscale_rgb(&crop, &mut |_, _| {})?; // warm-up: pipelines, plans
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        up.upscale_rgb(&crop, &mut |_, _| {})?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "median {:.1} ms  min {:.1}  max {:.1}  ({runs} runs)",
        times[runs / 2],
        times[0],
        times[runs - 1]
    );
    Ok(())
}
