//! Time the whole upscale of a centre crop of an image (upload to download, tiling and host
//! conversions included), the figure benches/RESULTS.md compares with ncnn:
//! `cargo bench --bench model -- [IMG] [WxH] [RUNS] [--model=P.param] [--raw-out=FILE]
//! [--json=FILE] [--profile]`. `--raw-out` writes the output as little-endian f32 HWC RGB
//! (the layout of `benches/ncnn_peer.py --raw-out`), `--profile` adds per-step timings.

use std::time::Instant;

use refqsr::{Options, Upscaler};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(String::from))
    };
    // cargo bench adds `--bench`; positional arguments are ours.
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let path = pos
        .first()
        .map(|s| s.as_str())
        .unwrap_or("assets/images/astronaut.png");
    let size = pos.get(1).map(|s| s.as_str()).unwrap_or("256x256");
    let runs: usize = pos.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let (w, h) = size.split_once('x').ok_or("size is WxH")?;
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    let img = image::open(path)?.to_rgb32f();
    if img.width() < w || img.height() < h {
        return Err(format!("{path} is smaller than {size}").into());
    }
    let (x, y) = ((img.width() - w) / 2, (img.height() - h) / 2);
    let crop = image::imageops::crop_imm(&img, x, y, w, h).to_image();
    let opts = Options {
        model: flag("model").map(Into::into),
        ..Options::default()
    };
    let up = Upscaler::new(&opts)?;
    let grid = up.grid(w as usize, h as usize)?;
    eprintln!(
        "{} x{} on {}",
        up.graph().name,
        up.scale(),
        up.context().describe()
    );
    eprintln!(
        "{w}x{h}: {} window(s) of {:?}, halo {}",
        grid.tiles.len(),
        grid.input_size(),
        up.halo()
    );
    let out = up.upscale_rgb(&crop, &mut |_, _| {})?; // warm-up: pipelines, plans
    if let Some(raw) = flag("raw-out") {
        std::fs::write(&raw, bytemuck::cast_slice::<f32, u8>(out.as_raw()))?;
    }
    if args.iter().any(|a| a == "--profile") {
        for (label, ms) in up.profile_rgb(&crop)? {
            eprintln!("{ms:8.2} ms  {label}");
        }
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        up.upscale_rgb(&crop, &mut |_, _| {})?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let (median, min, max) = (sorted[runs / 2], sorted[0], sorted[runs - 1]);
    println!("median {median:.1} ms  min {min:.1}  max {max:.1}  ({runs} runs)");
    if let Some(json) = flag("json") {
        let info = &up.context().info;
        let record = serde_json::json!({
            "tool": "refqsr",
            "version": env!("CARGO_PKG_VERSION"),
            "adapter": info.name,
            "backend": format!("{:?}", info.backend),
            "driver": format!("{} {}", info.driver, info.driver_info),
            "model": up.graph().name,
            "width": w,
            "height": h,
            "scale": up.scale(),
            "runs": runs,
            "times_ms": times,
            "median_ms": median,
            "min_ms": min,
            "max_ms": max,
        });
        std::fs::write(json, serde_json::to_string_pretty(&record)?)?;
    }
    Ok(())
}
