//! Time the whole upscale of a centre crop of an image (upload to download, tiling and host
//! conversions included), the figure benches/RESULTS.md compares with ncnn:
//! `cargo bench --bench model -- [IMG] [WxH] [RUNS] [--model=P.param] [--raw-out=FILE]
//! [--json=FILE] [--profile] [--modes=fp32,w8a8,...]`. `--raw-out` writes the output as
//! little-endian f32 HWC RGB (the layout of `benches/ncnn_peer.py --raw-out`), `--profile`
//! adds per-step timings. With several modes the runs alternate between them, so their ratios
//! come from one run under the same conditions.

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
    let modes = refqsr::quant::Mode::parse_list(&flag("modes").unwrap_or("fp32".into()))?;
    let ups = modes
        .iter()
        .map(|&mode| {
            Upscaler::new(&Options {
                model: flag("model").map(Into::into),
                mode,
                ..Options::default()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let up = &ups[0];
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
    for u in &ups {
        if let Some(why) = u.fallback() {
            eprintln!("warning: {why}");
        }
        let out = u.upscale_rgb(&crop, &mut |_, _| {})?; // warm-up: pipelines, plans
        if let Some(raw) = flag("raw-out") {
            std::fs::write(&raw, bytemuck::cast_slice::<f32, u8>(out.as_raw()))?;
        }
        if args.iter().any(|a| a == "--profile") {
            eprintln!("{}:", u.mode());
            for (label, ms) in u.profile_rgb(&crop)? {
                eprintln!("{ms:8.2} ms  {label}");
            }
        }
    }
    let mut times = vec![Vec::new(); ups.len()];
    for _ in 0..runs {
        for (u, t) in ups.iter().zip(&mut times) {
            let start = Instant::now();
            u.upscale_rgb(&crop, &mut |_, _| {})?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let stats: Vec<(f64, f64, f64)> = times
        .iter()
        .map(|t| {
            let mut s = t.clone();
            s.sort_by(f64::total_cmp);
            (s[runs / 2], s[0], s[runs - 1])
        })
        .collect();
    for (u, &(median, min, max)) in ups.iter().zip(&stats) {
        println!(
            "{:>6}: median {median:.1} ms  min {min:.1}  max {max:.1}  ({runs} runs)  {:.2}x {}",
            u.mode().to_string(),
            stats[0].0 / median,
            ups[0].mode()
        );
    }
    if let Some(json) = flag("json") {
        let info = &up.context().info;
        let records: Vec<serde_json::Value> = ups
            .iter()
            .zip(&times)
            .zip(&stats)
            .map(|((u, t), &(median, min, max))| {
                serde_json::json!({
                    "tool": "refqsr",
                    "version": env!("CARGO_PKG_VERSION"),
                    "adapter": info.name,
                    "backend": format!("{:?}", info.backend),
                    "driver": format!("{} {}", info.driver, info.driver_info),
                    "model": u.graph().name,
                    "mode": u.mode().to_string(),
                    "width": w,
                    "height": h,
                    "scale": u.scale(),
                    "runs": runs,
                    "times_ms": t,
                    "median_ms": median,
                    "min_ms": min,
                    "max_ms": max,
                })
            })
            .collect();
        let value = if records.len() == 1 {
            records.into_iter().next().unwrap()
        } else {
            serde_json::Value::Array(records)
        };
        std::fs::write(json, serde_json::to_string_pretty(&value)?)?;
    }
    Ok(())
}
