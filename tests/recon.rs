//! Reconstruction calibration: the model it learns on is the model the engine runs (the float
//! graph of the CPU twins, the integer kernels' output), learning the steps recovers the
//! output from a bad start, and weight codes chosen (GPTQ) or learned end to end beat the
//! nearest codes in the integer kernels.

mod common;

use common::ctx;
use refqsr::exec::GpuModel;
use refqsr::quant::recon::{self, Options};
use refqsr::quant::{Bounds, Calibration, Mode};

/// The shipped SPAN x4, prepared for the integer modes, and its shipped calibration.
fn span() -> (refqsr::model::Graph, Calibration) {
    let graph = refqsr::quant::prepare(refqsr::upscaler::load_graph(None, Some(4)).unwrap());
    let calib = refqsr::upscaler::load_calibration(&refqsr::Options::default(), &graph).unwrap();
    (graph, calib)
}

/// Planar `[3][h][w]` crops of a shipped photo.
fn photo(name: &str, (x, y, w, h): (u32, u32, u32, u32)) -> (image::Rgb32FImage, Vec<f32>) {
    let img = image::open(common::asset(&format!("images/{name}")))
        .unwrap()
        .crop_imm(x, y, w, h)
        .to_rgb32f();
    let planar = (0..3)
        .flat_map(|c| img.pixels().map(move |p| p.0[c]))
        .collect();
    (img, planar)
}

/// Three 64-pixel crops of the shipped photos to calibrate on.
fn calibration_crops() -> Vec<image::Rgb32FImage> {
    [
        ("chelsea.png", (60, 40, 64, 64)),
        ("astronaut.png", (150, 100, 64, 64)),
        ("coffee.png", (250, 150, 64, 64)),
    ]
    .into_iter()
    .map(|(n, r)| photo(n, r).0)
    .collect()
}

/// Planar `[c][h][w]` to the engine's C4HW (one batch).
fn c4hw(planar: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let groups = c.div_ceil(4);
    let mut out = vec![0f32; groups * 4 * h * w];
    for ch in 0..c {
        for i in 0..h * w {
            out[((ch / 4) * h * w + i) * 4 + ch % 4] = planar[ch * h * w + i];
        }
    }
    out
}

/// C4HW (one batch) back to planar `[c][h][w]`.
fn planar(c4: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    (0..c)
        .flat_map(|ch| (0..h * w).map(move |i| c4[((ch / 4) * h * w + i) * 4 + ch % 4]))
        .collect()
}

/// The x4 output of `graph`'s integer layers of `mode` on the integer kernels, for the planar
/// crop `x`.
fn integer_output(
    ctx: &std::sync::Arc<refqsr::gpu::Context>,
    graph: &refqsr::model::Graph,
    calib: &Calibration,
    mode: Mode,
    x: &[f32],
    (h, w): (usize, usize),
) -> Vec<f32> {
    let int = refqsr::quant::int_layers(graph, mode, calib, Bounds::Channel);
    let model = GpuModel::quantized(ctx.clone(), graph.clone(), int).unwrap();
    let out = model.plan(1, h, w).unwrap().run(&c4hw(x, 3, h, w)).unwrap();
    planar(&out, 3, 4 * h, 4 * w)
}

fn mse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn the_learned_model_is_the_cpu_twins_graph_and_the_integer_kernels_output() {
    let (graph, calib) = span();
    let (h, w) = (20, 24);
    let (_, x) = photo("coffee.png", (200, 120, w as u32, h as u32));
    let float = recon::output(&graph, None, &x, (1, h, w)).unwrap();
    // the float graph: the CPU twins are an independent implementation of every op
    let input = refqsr::kernels::cpu::Tensor {
        n: 1,
        c: 3,
        h,
        w,
        data: c4hw(&x, 3, h, w),
    };
    let twin = refqsr::kernels::cpu::run_graph(&graph, &input);
    let twin = planar(&twin.data, 3, 4 * h, 4 * w);
    let worst = common::max_abs_diff(&float, &twin);
    eprintln!("candle float vs CPU twins: max |diff| {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");

    // fake quantization against the integer kernels on the GPU
    let ctx = ctx();
    let gpu =
        |calib: &Calibration, mode: Mode| integer_output(&ctx, &graph, calib, mode, &x, (h, w));
    let w8a8: Mode = "w8a8".parse().unwrap();
    // One integer layer at a time: the two may differ only where float noise (the GPU's float
    // layers run Winograd) moves a value across a rounding boundary, far less than the
    // quantization itself (1/13 to 1/600 of it on this crop; a wrong step or weight gives
    // about as much as the quantization).
    for k in 0..calib.layers.len() {
        let mut one = calib.clone();
        for (i, l) in one.layers.iter_mut().enumerate() {
            if i != k {
                l.floor = Some([refqsr::quant::calib::FLOAT; 2]);
            }
        }
        if one.spec(8, 8)[k][0] == refqsr::quant::calib::FLOAT {
            continue;
        }
        let fake = recon::output(&graph, Some((&one, w8a8)), &x, (1, h, w)).unwrap();
        let int = gpu(&one, w8a8);
        let (mismatch, error) = (mse(&fake, &int), mse(&int, &float));
        assert!(
            error > 0.0 && mismatch < error / 8.0,
            "{}: fake vs integer MSE {mismatch:.3e}, integer vs float {error:.3e}",
            one.layers[k].name
        );
    }
    // All layers: a flipped code perturbs every later layer, so the two drift apart pixel by
    // pixel, but their errors against float must be the same size.
    for mode in ["w8a8", "w4a4"] {
        let mode: Mode = mode.parse().unwrap();
        let fake = recon::output(&graph, Some((&calib, mode)), &x, (1, h, w)).unwrap();
        let int = gpu(&calib, mode);
        let (a, b) = (mse(&fake, &float), mse(&int, &float));
        eprintln!("{mode}: MSE against float: fake-quantized {a:.3e}, integer kernels {b:.3e}");
        assert!(
            b > 0.0 && (a / b - 1.0).abs() < 0.15,
            "{mode}: {a:.3e} vs {b:.3e}"
        );
    }
}

#[test]
fn learning_the_steps_recovers_the_output_from_coarse_ones() {
    let (graph, mut calib) = span();
    // every 4-bit step four times too coarse: most activations fall in a few codes
    for l in &mut calib.layers {
        l.weight_clip.clear();
        l.query_channels.clear();
        l.query_weight_clip.clear();
        if let Some(ch) = l.channels.get_mut(&4) {
            ch.steps.iter_mut().for_each(|s| *s *= 4.0);
        }
    }
    let before = calib.clone();
    let images = calibration_crops();
    let opts = Options {
        steps: 40,
        batch: 2,
        crop: 24,
        lr: 0.05,
        holdout: 4,
        ..Options::default()
    };
    let mode: Mode = "w4a4".parse().unwrap();
    let out = recon::reconstruct(&graph, &mut calib, mode, &images, &opts, &mut |_, _| {}).unwrap();
    eprintln!(
        "w4a4 from 4x coarse steps: held-out PSNR {:.2} -> {:.2} dB over {} layers",
        out.psnr[0], out.psnr[1], out.layers
    );
    assert!(out.kept && out.psnr[1] > out.psnr[0] + 1.0, "{out:?}");
    let spec = calib.spec(4, 4);
    let float = refqsr::quant::calib::FLOAT;
    let mut log_ratio = Vec::new();
    for (i, (l, b)) in calib.layers.iter().zip(&before.layers).enumerate() {
        // every integer layer learns the steps it runs at in w4a4 (its floor may hold it at
        // 6 or 8 bits), and its weights' clip at their bits; nothing else changes
        let [w, a] = spec[i];
        let learned = a != float && b.channels.contains_key(&a);
        for (bits, steps) in &l.channels {
            assert_eq!(
                steps != &b.channels[bits],
                learned && *bits == a,
                "{}",
                l.name
            );
        }
        let clips: Vec<u32> = l.weight_clip.keys().copied().collect();
        assert_eq!(clips, if learned { vec![w] } else { vec![] }, "{}", l.name);
        if learned && a == 4 {
            let (s, s0) = (&l.channels[&4], &b.channels[&4]);
            assert_eq!(s.lo, s0.lo);
            log_ratio.extend(
                s.steps
                    .iter()
                    .zip(&s0.steps)
                    .map(|(a, b)| (a / b).ln() as f64),
            );
        }
    }
    // the coarse steps shrink on the whole
    let mean = log_ratio.iter().sum::<f64>() / log_ratio.len() as f64;
    assert!(mean < 0.0, "mean log ratio of the steps {mean}");
    // RefQSR's 8-4 learns its queries' own steps and clips (4-bit inputs, 6-bit weights, the
    // first block at 8), leaving the shared ones to the uniform modes, and the query path runs
    // on them
    let shared = calib.clone();
    let refqsr: Mode = "refqsr:8-4".parse().unwrap();
    let out =
        recon::reconstruct(&graph, &mut calib, refqsr, &images, &opts, &mut |_, _| {}).unwrap();
    eprintln!(
        "refqsr:8-4 queries: held-out PSNR {:.2} -> {:.2} dB over {} layers",
        out.psnr[0], out.psnr[1], out.layers
    );
    assert!(out.kept, "{out:?}");
    let q = refqsr::refqsr::query_calibration(&graph, &calib, 8);
    let query_spec = q.spec(6, 4);
    for (i, (l, b)) in calib.layers.iter().zip(&shared.layers).enumerate() {
        assert_eq!((&l.channels, &l.weight_clip), (&b.channels, &b.weight_clip));
        let [w, a] = query_spec[i];
        let learned = a != float && b.channels.contains_key(&a);
        let steps: Vec<u32> = l.query_channels.keys().copied().collect();
        let clips: Vec<u32> = l.query_weight_clip.keys().copied().collect();
        assert_eq!(steps, if learned { vec![a] } else { vec![] }, "{}", l.name);
        assert_eq!(clips, if learned { vec![w] } else { vec![] }, "{}", l.name);
        if learned {
            assert_eq!(q.layers[i].channels[&a], l.query_channels[&a]);
            assert_eq!(q.layers[i].weight_clip[&w], l.query_weight_clip[&w]);
        }
    }
    // what it writes is a valid calibration
    let text = serde_json::to_string(&calib).unwrap();
    Calibration::parse(&text, std::path::Path::new("learned.calib.json"), &graph).unwrap();
    // images too small to crop are refused with a clear error
    let tiny = vec![image::Rgb32FImage::new(5, 5)];
    let e = recon::reconstruct(&graph, &mut calib, mode, &tiny, &opts, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("8x8"), "{e}");
}

#[test]
fn weight_codes_chosen_against_the_inputs_beat_nearest_codes_in_the_integer_kernels() {
    let (graph, mut calib) = span();
    for l in &mut calib.layers {
        l.weight_codes.clear();
    }
    let nearest = calib.clone();
    let images = calibration_crops();
    let opts = refqsr::quant::gptq::Options {
        crops: 16,
        crop: 32,
        holdout: 4,
        ..Default::default()
    };
    let mode: Mode = "w6a6".parse().unwrap();
    let out = refqsr::quant::gptq::round_weights(
        &graph,
        &mut calib,
        mode,
        &images,
        &opts,
        &mut |_, _| {},
    )
    .unwrap();
    eprintln!(
        "w6a6 weight codes: held-out PSNR {:.2} -> {:.2} dB over {} layers",
        out.psnr[0], out.psnr[1], out.layers
    );
    assert!(out.kept && out.psnr[1] > out.psnr[0] + 0.5, "{out:?}");
    // every integer layer of the mode got codes, which the integer layers carry exactly
    let spec = calib.spec(6, 6);
    for (i, &j) in refqsr::quant::body_convs(&graph).iter().enumerate() {
        let [w, a] = spec[i];
        if a == refqsr::quant::calib::FLOAT {
            continue;
        }
        let l = &calib.layers[i];
        assert_eq!(l.weight_codes.len(), 1, "{}", l.name);
        let e = &l.weight_codes[0];
        assert_eq!((e.w, e.a), (w, a));
        let refqsr::model::Op::Conv(c) = &graph.nodes[j].op else {
            unreachable!()
        };
        let act = calib.quantizer(i, a, Bounds::Channel);
        let clip = calib.weight_clip(i, w, Bounds::Channel);
        let (_, wq) = refqsr::quant::fold_weights(c, w, &act, Bounds::Channel, clip);
        let eff = refqsr::quant::effective_weights(
            c,
            w,
            &act,
            &l.mean,
            Bounds::Channel,
            clip,
            &l.weight_codes,
        );
        let (taps, per) = (c.k * c.k, c.in_ch * c.k * c.k);
        for (n, (&x, &code)) in eff.weights.iter().zip(&e.codes).enumerate() {
            let back = x * act.channel((n / taps) % c.in_ch).step() / wq[n / per].step();
            assert!(
                (back - code as f32).abs() < 1e-3,
                "{} weight {n}: {back} {code}",
                l.name
            );
        }
        // and they are not the nearest codes
        let moved = (e.codes.iter().enumerate())
            .filter(|&(n, &code)| {
                let folded = c.weights[n] * act.channel((n / taps) % c.in_ch).step();
                wq[n / per].code(folded) != code as i32
            })
            .count();
        assert!(moved > 0, "{}", l.name);
    }
    // on an unseen crop, through the integer kernels on the GPU, they beat the nearest codes
    let ctx = ctx();
    let (h, w) = (32, 32);
    let (_, x) = photo("chelsea.png", (200, 150, w as u32, h as u32));
    let float = recon::output(&graph, None, &x, (1, h, w)).unwrap();
    let gpu = |calib: &Calibration| integer_output(&ctx, &graph, calib, mode, &x, (h, w));
    let (chosen, rounded) = (mse(&gpu(&calib), &float), mse(&gpu(&nearest), &float));
    eprintln!("w6a6 on an unseen crop, MSE against float: chosen codes {chosen:.3e}, nearest {rounded:.3e}");
    assert!(chosen < rounded, "{chosen:.3e} {rounded:.3e}");

    // the file keeps them, and refuses codes that do not fit it
    let origin = std::path::Path::new("rounded.calib.json");
    let text = serde_json::to_string(&calib).unwrap();
    assert_eq!(Calibration::parse(&text, origin, &graph).unwrap(), calib);
    let k = (0..calib.layers.len())
        .find(|&i| {
            !calib.layers[i].weight_codes.is_empty() && calib.layers[i].channels.contains_key(&6)
        })
        .unwrap();
    let mut stale = calib.clone();
    stale.layers[k].channels.get_mut(&6).unwrap().steps[0] *= 1.01;
    let e =
        Calibration::parse(&serde_json::to_string(&stale).unwrap(), origin, &graph).unwrap_err();
    assert!(
        e.to_string().contains("weight_codes w6a6") && e.to_string().contains("stale"),
        "{e}"
    );
    let mut short = calib.clone();
    short.layers[k].weight_codes[0].codes.pop();
    let e =
        Calibration::parse(&serde_json::to_string(&short).unwrap(), origin, &graph).unwrap_err();
    assert!(e.to_string().contains("codes for"), "{e}");
}

#[test]
fn weight_codes_learned_end_to_end_improve_held_out_crops_and_are_stored() {
    let (graph, mut calib) = span();
    for l in &mut calib.layers {
        l.weight_codes.clear();
    }
    let opts = refqsr::quant::rounding::Options {
        steps: 40,
        batch: 2,
        crop: 24,
        holdout: 4,
        ..Default::default()
    };
    let mode: Mode = "w4a4".parse().unwrap();
    let learn = |calib: &mut Calibration| {
        refqsr::quant::rounding::learn_codes(
            &graph,
            calib,
            mode,
            &calibration_crops(),
            &opts,
            &mut |_, _| {},
        )
        .unwrap()
    };
    let out = learn(&mut calib);
    eprintln!(
        "w4a4 learned weight codes: held-out PSNR {:.2} -> {:.2} dB over {} layers, {:.1}% moved",
        out.psnr[0],
        out.psnr[1],
        out.layers,
        100.0 * out.moved
    );
    assert!(out.kept && out.psnr[1] > out.psnr[0] + 0.5, "{out:?}");
    assert!(out.moved > 0.0 && out.moved < 0.5, "{out:?}");
    let coded = calib.layers.iter().filter(|l| !l.weight_codes.is_empty());
    assert_eq!(coded.count(), out.layers);
    let text = serde_json::to_string(&calib).unwrap();
    let back = Calibration::parse(&text, std::path::Path::new("learned.calib.json"), &graph);
    assert_eq!(back.unwrap(), calib);
    // w4a4 left the layers its floors keep wider than 4 bits to the plain mode of their
    // widths (their codes would serve it unjudged); that mode learns them itself
    let sets = || calib.layers.iter().flat_map(|l| &l.weight_codes);
    assert!(sets().all(|c| c.w <= 4 || c.a <= 4));
    assert!(sets().all(|c| c.learned));
    // codes learned end to end stay: learning the same mode again has nothing to learn
    let again = learn(&mut calib);
    assert_eq!(again.layers, 0, "{again:?}");
    // codes chosen layer by layer (GPTQ's kind; here deliberately bad ones, every code
    // negated) are the baseline the learning must beat, and give way where it does
    let mut chosen = calib.clone();
    for c in chosen.layers.iter_mut().flat_map(|l| &mut l.weight_codes) {
        c.learned = false;
        c.codes
            .iter_mut()
            .for_each(|q| *q = q.saturating_neg().min(7));
    }
    let replaced = learn(&mut chosen);
    assert!(
        replaced.kept && replaced.layers == out.layers,
        "{replaced:?}"
    );
    for l in &chosen.layers {
        assert!(l.weight_codes.iter().all(|c| c.learned), "{}", l.name);
        let prints: std::collections::BTreeSet<_> =
            l.weight_codes.iter().map(|c| &c.fingerprint).collect();
        assert_eq!(
            prints.len(),
            l.weight_codes.len(),
            "{}: one set per folding",
            l.name
        );
    }
    let wide = refqsr::quant::rounding::learn_codes(
        &graph,
        &mut calib,
        "w6a6".parse().unwrap(),
        &calibration_crops(),
        &refqsr::quant::rounding::Options { steps: 4, ..opts },
        &mut |_, _| {},
    )
    .unwrap();
    assert!(wide.layers > 0, "{wide:?}");
}

#[test]
fn the_shipped_learned_weight_codes_beat_nearest_codes_on_photos_calibration_never_saw() {
    // the shipped SPAN x4 calibration learned its 4-bit codes on 63 package photos; the
    // shipped photos are held out of it (assets/calib/manifest.json)
    let (graph, learned) = span();
    let mut nearest = learned.clone();
    for l in &mut nearest.layers {
        l.weight_codes.retain(|c| c.w > 4 && c.a > 4);
    }
    assert_ne!(
        nearest, learned,
        "the shipped calibration has no 4-bit weight codes"
    );
    let ctx = ctx();
    let (h, w) = (32, 32);
    for mode in ["w4a4", "w4a3"] {
        let mode: Mode = mode.parse().unwrap();
        let [mut with, mut without] = [0.0; 2];
        for (name, (x0, y0)) in [
            ("chelsea.png", (200, 150)),
            ("coffee.png", (100, 100)),
            ("coffee.png", (400, 250)),
            ("astronaut.png", (300, 300)),
            ("astronaut.png", (100, 40)),
        ] {
            let (_, x) = photo(name, (x0, y0, w as u32, h as u32));
            let float = recon::output(&graph, None, &x, (1, h, w)).unwrap();
            let gpu = |calib: &Calibration| integer_output(&ctx, &graph, calib, mode, &x, (h, w));
            let (a, b) = (mse(&gpu(&learned), &float), mse(&gpu(&nearest), &float));
            eprintln!("{mode} {name} ({x0}, {y0}), MSE against float: learned codes {a:.3e}, nearest {b:.3e}");
            with += a;
            without += b;
        }
        assert!(with < without, "{mode}: {with:.3e} {without:.3e}");
    }
}
