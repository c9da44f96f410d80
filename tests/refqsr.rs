//! RefQSR end to end on the shipped SPAN x4 and its shipped parameters: the reference path is
//! the uniform high-precision model, the plan's properties hold on real images, and odd
//! images run.

mod common;

use image::{imageops, Rgb, Rgb32FImage};
use refqsr::quant::Mode;
use refqsr::refqsr::Ablation;
use refqsr::{Options, Upscaler};

fn upscaler(mode: &str, f: impl FnOnce(&mut Options)) -> Upscaler {
    let mut o = Options {
        mode: mode.parse::<Mode>().unwrap(),
        ..Options::default()
    };
    f(&mut o);
    Upscaler::with_graph(
        common::ctx(),
        refqsr::upscaler::load_graph(None, Some(4)).unwrap(),
        &o,
    )
    .unwrap()
}

fn photo(path: &str, x: u32, y: u32, w: u32, h: u32) -> Rgb32FImage {
    let img = refqsr::imageio::read(std::path::Path::new(path))
        .unwrap()
        .to_rgb32f();
    imageops::crop_imm(&img, x, y, w, h).to_image()
}

fn run(up: &Upscaler, img: &Rgb32FImage) -> Rgb32FImage {
    let out = up.upscale_rgb(img, &mut |_, _| {}).unwrap();
    assert_eq!(
        (out.width(), out.height()),
        (img.width() * 4, img.height() * 4)
    );
    assert!(out.as_raw().iter().all(|x| x.is_finite()));
    out
}

fn psnr(a: &Rgb32FImage, b: &Rgb32FImage) -> f64 {
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| ((x.clamp(0.0, 1.0) - y.clamp(0.0, 1.0)) as f64).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (1.0 / mse.max(1e-20)).log10()
}

/// The uniform model cut into the same patches as RefQSR cuts the image.
fn w8a8_patched() -> Upscaler {
    upscaler("w8a8", |o| {
        o.tile = Some(refqsr::refqsr::PATCH);
        o.halo = Some(refqsr::refqsr::HALO);
    })
}

#[test]
fn with_every_patch_a_reference_refqsr_8_4_is_w8a8() {
    let img = photo("assets/images/coffee.png", 200, 100, 150, 110);
    let all_refs = upscaler("refqsr:8-4", |o| o.tau = Some(2.0));
    let a = run(&all_refs, &img);
    let stats = all_refs.last_refqsr_run().unwrap();
    assert_eq!(stats.references, stats.patches);
    assert!(stats.patches >= 6, "{stats:?}");
    let b = run(&w8a8_patched(), &img);
    // RefQSR blends neighbouring windows across their overlap where w8a8 cuts them at the
    // core: the pixels one window alone covers are w8a8's to the bit, the rest blend two
    // outputs of the same w8a8 model
    let grid = refqsr::tile::Grid::new(150, 110, refqsr::refqsr::PATCH, refqsr::refqsr::HALO, 0);
    let covers = |s: refqsr::tile::Span, size: usize, o: u32| {
        let o = o as isize;
        o >= s.start * 4 && o < (s.start + size as isize) * 4
    };
    let (mut lone, mut shared) = (0, 0);
    for (x, y, p) in a.enumerate_pixels() {
        let n = grid
            .tiles
            .iter()
            .filter(|t| covers(t.x, grid.window_w, x) && covers(t.y, grid.window_h, y))
            .count();
        if n == 1 {
            assert_eq!(p, b.get_pixel(x, y), "at {x},{y}");
            lone += 1;
        } else {
            shared += 1;
        }
    }
    assert!(lone > shared && shared > 0, "{lone} {shared}");
    let p = psnr(&a, &b);
    assert!(p > 40.0, "blended overlaps {p:.2} dB from w8a8's cut");
}

#[test]
fn queries_borrow_from_references_and_the_plan_is_stable() {
    let img = photo("assets/images/astronaut.png", 0, 0, 200, 160);
    let up = upscaler("refqsr:8-4", |_| {});
    let a = run(&up, &img);
    let s = up.last_refqsr_run().unwrap();
    eprintln!("{s:?}");
    assert!(s.references < s.patches && s.references > 0, "{s:?}");
    // the same plan and output every run
    let b = run(&up, &img);
    let t = up.last_refqsr_run().unwrap();
    assert_eq!(
        (s.references, s.waves, s.group),
        (t.references, t.waves, t.group)
    );
    assert!(a.as_raw() == b.as_raw());
    // a small budget: more waves and smaller groups, the same output, within the budget
    let budget = s.peak_bytes / 3;
    let tight = upscaler("refqsr:8-4", |o| o.max_memory = Some(budget));
    let c = run(&tight, &img);
    let u = tight.last_refqsr_run().unwrap();
    assert!(u.peak_bytes <= budget, "{u:?}");
    assert!(u.group < s.group || u.waves > s.waves, "{u:?} vs {s:?}");
    assert!(
        a.as_raw() == c.as_raw(),
        "output depends on the memory budget"
    );
    // close to w8a8 and far from nothing
    let w8 = run(&w8a8_patched(), &img);
    let p = psnr(&a, &w8);
    assert!(p > 30.0, "refqsr:8-4 vs w8a8: {p:.2} dB");
}

#[test]
fn odd_images_run() {
    let up = upscaler("refqsr:8-4", |_| {});
    let w8 = w8a8_patched();
    // one patch: a reference, so exactly w8a8
    for (w, h) in [(1, 1), (7, 3)] {
        let img = photo("assets/images/chelsea.png", 100, 100, w, h);
        let a = run(&up, &img);
        assert_eq!(up.last_refqsr_run().unwrap().patches, 1);
        assert!(a.as_raw() == run(&w8, &img).as_raw(), "{w}x{h}");
    }
    // a flat colour: every patch alike, one reference (w6a4 itself is 28.5 dB from fp32 on
    // this image: four-bit activations see no texture to hide their steps in)
    let flat = Rgb32FImage::from_pixel(150, 100, Rgb([0.3, 0.55, 0.8]));
    let a = run(&up, &flat);
    let s = up.last_refqsr_run().unwrap();
    assert_eq!(s.references, 1, "{s:?}");
    assert!(psnr(&a, &run(&w8, &flat)) > 25.0);
    // one patch wide
    let tall = photo("assets/images/chelsea.png", 200, 0, 40, 300);
    let a = run(&up, &tall);
    assert!(psnr(&a, &run(&w8, &tall)) > 25.0);
}

#[test]
fn ablations_run() {
    let img = photo("assets/images/chelsea.png", 100, 50, 150, 150);
    let base = run(&upscaler("refqsr:8-4", |_| {}), &img);
    for a in Ablation::ALL {
        let up = upscaler("refqsr:8-4", |o| o.ablation = a);
        let out = run(&up, &img);
        assert!(psnr(&out, &base) > 25.0, "{}", a.name());
        let s = up.last_refqsr_run().unwrap();
        assert!(s.references < s.patches, "{}: {s:?}", a.name());
    }
}

#[test]
fn queries_keep_the_first_residual_block_at_b_high() {
    use refqsr::quant::calib::FLOAT;
    let g = refqsr::quant::prepare(refqsr::upscaler::load_graph(None, Some(4)).unwrap());
    let calib = refqsr::upscaler::load_calibration(&Options::default(), &g).unwrap();
    let body = refqsr::quant::body_convs(&g);
    // SPAN's first block: its three convolutions, the last with the gate
    let first = refqsr::refqsr::first_block(&g);
    let names: Vec<&str> = body[first.clone()]
        .iter()
        .map(|&j| g.nodes[j].name.as_str())
        .collect();
    assert!(
        names.len() == 3 && names.iter().all(|n| n.starts_with("/block_1/")),
        "{names:?}"
    );
    for (high, low) in [(8, 4), (4, 3)] {
        let q = refqsr::refqsr::query_layers(&g, &calib, (high, low), Default::default());
        let medium = refqsr::refqsr::medium(high, low);
        for (i, &j) in body.iter().enumerate() {
            let floor = calib.layers[i].floor.unwrap_or([0, 0]);
            if floor == [FLOAT; 2] {
                assert!(!q.contains_key(&j), "float layer {i} quantized");
                continue;
            }
            let want = if first.contains(&i) {
                (high.max(floor[0]), high.max(floor[1]))
            } else {
                (medium.max(floor[0]), low.max(floor[1]))
            };
            assert_eq!(
                (q[&j].w_bits, q[&j].act.bits),
                want,
                "refqsr:{high}-{low} layer {i} {}",
                g.nodes[j].name
            );
        }
    }
}

/// Output distance (root of the summed squared difference).
fn distance(a: &Rgb32FImage, b: &Rgb32FImage) -> f64 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn a_refer_gain_scales_its_correction_and_zero_runs_without_it() {
    let img = photo("assets/images/astronaut.png", 40, 30, 150, 150);
    let graph = refqsr::quant::prepare(refqsr::upscaler::load_graph(None, Some(4)).unwrap());
    let shipped = refqsr::upscaler::load_refqsr_params(&Options::default(), &graph).unwrap();
    let dir = common::tempdir("refer-gain");
    let with_gain = |gain: Option<f32>| {
        let mut v = serde_json::to_value(&shipped).unwrap();
        for r in v["refer"].as_array_mut().unwrap() {
            match gain {
                Some(g) => r["gain"] = serde_json::json!(g),
                // a file written before RefER had a gain
                None => drop(r.as_object_mut().unwrap().remove("gain")),
            }
        }
        let path = dir.join(format!("{gain:?}.refqsr.json"));
        std::fs::write(&path, v.to_string()).unwrap();
        let up = upscaler("refqsr:8-4", |o| o.refqsr_params = Some(path));
        let out = run(&up, &img);
        (out, up.last_refqsr_run().unwrap())
    };
    let (none, none_stats) = with_gain(Some(0.0));
    let no_refer = run(
        &upscaler("refqsr:8-4", |o| o.ablation = Ablation::NoRefer),
        &img,
    );
    assert!(
        none.as_raw() == no_refer.as_raw(),
        "gain 0 differs from the queries without RefER"
    );
    let (full, full_stats) = with_gain(Some(1.0));
    let (old, _) = with_gain(None);
    assert!(full.as_raw() == old.as_raw(), "no gain field is gain 1");
    // RefER costs BitOPs only where it runs
    assert!(full_stats.bitops_body_g > none_stats.bitops_body_g);
    // the correction reaches the output through the linear tail: half the gain, about half
    // the change (the RefER conv's 8-bit weights are requantized at each gain)
    let (half, _) = with_gain(Some(0.5));
    let whole = distance(&full, &none);
    assert!(whole > 0.0);
    let ratio = distance(&half, &none) / whole;
    assert!(
        (0.4..0.6).contains(&ratio),
        "half the gain moved {ratio:.3} of the whole"
    );
}
