//! Hostile files, fuzzed from fixed seeds: mutated ncnn `.param`/`.bin` pairs, calibration
//! and RefQSR parameter JSON, and PNG, JPEG and WebP bytes go through the same entry points
//! the engine uses (the cargo-fuzz targets in tests/fuzz call them too). Every case must
//! come back as `Ok` or an error naming the file; none may panic. Each test prints how many
//! cases it ran. `REFQSR_FUZZ_CASES` sets the count per format (default 100,000; the seed
//! is fixed, `REFQSR_SEED` changes it).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use common::{asset, Rng};
use refqsr::model::ncnn;

fn cases() -> usize {
    std::env::var("REFQSR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Numbers that break arithmetic read from files.
const NASTY: &[&str] = &[
    "0",
    "-1",
    "1",
    "3",
    "-233",
    "2147483647",
    "4294967295",
    "9223372036854775807",
    "18446744073709551615",
    "-9223372036854775808",
    "1e39",
    "-1e39",
    "nan",
    "NaN",
    "inf",
    "-0.0",
    "0.5",
    "65536",
    "-23301=3,1,2",
];

/// The token of text `d` around byte `at`: the bytes between separators (whitespace and the
/// JSON and ncnn punctuation).
fn token_around(d: &[u8], at: usize) -> std::ops::Range<usize> {
    let is_sep = |b: u8| b.is_ascii_whitespace() || b",:[]{}\"=".contains(&b);
    let mut s = at;
    while s > 0 && !is_sep(d[s - 1]) {
        s -= 1;
    }
    let mut e = at;
    while e < d.len() && !is_sep(d[e]) {
        e += 1;
    }
    s..e
}

/// One mutation of `data`: byte flips, cuts, duplications, insertions, or (for text) a token
/// swapped for a nasty number or another token of the file.
fn mutate(rng: &mut Rng, data: &[u8], text: bool) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..1 + rng.below(3) {
        if d.is_empty() {
            d.push(rng.below(256) as u8);
        }
        let at = rng.below(d.len());
        match rng.below(if text { 7 } else { 5 }) {
            0 => d[at] ^= 1 << rng.below(8),
            1 => d[at] = rng.below(256) as u8,
            2 => {
                let end = (at + 1 + rng.below(64)).min(d.len());
                d.drain(at..end);
            }
            3 => {
                let end = (at + 1 + rng.below(64)).min(d.len());
                let chunk = d[at..end].to_vec();
                let to = rng.below(d.len() + 1);
                d.splice(to..to, chunk);
            }
            4 => d.truncate(at),
            _ => {
                // replace the token around `at` (text formats)
                let here = token_around(&d, at);
                let new: Vec<u8> = if rng.below(2) == 0 {
                    NASTY[rng.below(NASTY.len())].as_bytes().to_vec()
                } else {
                    d[token_around(&d, rng.below(d.len()))].to_vec()
                };
                d.splice(here, new);
            }
        }
    }
    d
}

/// Run `check` on `n` mutations of `seed_input`; panics are collected and reported with the
/// case that caused them.
fn fuzz(name: &str, seed_input: &[u8], text: bool, check: impl Fn(&[u8])) {
    let mut rng = Rng::fresh(name);
    let n = cases();
    let mut errors_seen = 0usize;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut panics = Vec::new();
    for i in 0..n {
        let input = mutate(&mut rng, seed_input, text);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            panics.push((i, input));
            if panics.len() >= 3 {
                break;
            }
        } else {
            errors_seen += 1;
        }
    }
    std::panic::set_hook(hook);
    eprintln!("{name}: {n} cases, {} panics", panics.len());
    if let Some((i, input)) = panics.first() {
        let dump = std::env::temp_dir().join(format!("refqsr-fuzz-{name}-{i}"));
        std::fs::write(&dump, input).unwrap();
        // run it again, unguarded, for the message
        check(input);
        panic!(
            "{name}: case {i} panicked (input saved to {})",
            dump.display()
        );
    }
    assert!(errors_seen > 0);
}

/// The shipped SPAN x4 as the integer modes prepare it.
fn span_x4() -> refqsr::model::Graph {
    refqsr::quant::prepare(refqsr::upscaler::load_graph(None, Some(4)).unwrap())
}

fn shipped(name: &str) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(asset(&format!("models/{name}.param"))).unwrap(),
        std::fs::read(asset(&format!("models/{name}.bin"))).unwrap(),
    )
}

#[test]
fn ncnn_param_files_never_panic() {
    let (param, bin) = shipped("spanx2_ch48");
    fuzz("ncnn-param", &param, true, |p| {
        if let Err(e) = ncnn::load_bytes(Path::new("m.param"), p, Path::new("m.bin"), &bin) {
            let m = e.to_string();
            assert!(m.contains("m.param") || m.contains("m.bin"), "{m}");
        }
    });
}

#[test]
fn ncnn_bin_files_never_panic() {
    // a small model, so each case copies little
    let (param, bin) = shipped("realesr-animevideov3-x4");
    let head = &bin[..bin.len().min(4096)];
    let rest = bin[head.len()..].to_vec();
    fuzz("ncnn-bin", head, false, |h| {
        let mut b = h.to_vec();
        b.extend_from_slice(&rest);
        let _ = ncnn::load_bytes(Path::new("m.param"), &param, Path::new("m.bin"), &b);
    });
}

#[test]
fn calibration_files_never_panic() {
    let graph = span_x4();
    // the shipped file with weight codes on one layer only: every field is there, at a size
    // that parses 100,000 times in seconds (the codes of all layers take up most of the file)
    let mut calib = refqsr::upscaler::load_calibration(&Default::default(), &graph).unwrap();
    let coded = calib
        .layers
        .iter()
        .position(|l| !l.weight_codes.is_empty())
        .unwrap();
    for (i, l) in calib.layers.iter_mut().enumerate() {
        if i != coded {
            l.weight_codes.clear();
        }
    }
    let text = serde_json::to_vec_pretty(&calib).unwrap();
    let planned = std::sync::atomic::AtomicUsize::new(0);
    fuzz("calibration", &text, true, |t| {
        let Ok(s) = std::str::from_utf8(t) else {
            return;
        };
        let accepted = refqsr::quant::Calibration::parse(s, Path::new("c.json"), &graph);
        // What the planner does with an accepted file must not panic either (it quantizes
        // every weight, so only for the first accepted cases).
        let first = planned.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 30;
        if let (Ok(c), true) = (accepted, first) {
            for mode in [(8, 8), (4, 4), (6, 4)] {
                let m = refqsr::quant::Mode::Uniform {
                    w: mode.0,
                    a: mode.1,
                };
                let _ = refqsr::quant::int_layers(&graph, m, &c, refqsr::quant::Bounds::Searched);
                let _ = refqsr::quant::int_layers(&graph, m, &c, refqsr::quant::Bounds::MinMax);
            }
        }
    });
}

#[test]
fn refqsr_parameter_files_never_panic() {
    let graph = span_x4();
    let text = std::fs::read(asset("models/spanx4_ch48.refqsr.json")).unwrap();
    fuzz("refqsr-params", &text, true, |t| {
        let Ok(s) = std::str::from_utf8(t) else {
            return;
        };
        let _ = refqsr::refqsr::Params::parse(s, Path::new("p.json"), &graph);
    });
}

#[test]
fn refqsr_parameter_errors_name_the_field() {
    let graph = span_x4();
    let text = std::fs::read_to_string(asset("models/spanx4_ch48.refqsr.json")).unwrap();
    // as written now (RefER's convs listed), whatever form the shipped file has
    let params = refqsr::refqsr::Params::parse(&text, Path::new("shipped"), &graph).unwrap();
    let mut v = serde_json::to_value(&params).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let conv = |i: usize, f: &'static str, x: serde_json::Value| -> Edit {
        Box::new(move |v| v["refer"][0]["convs"][i][f] = x.clone())
    };
    let cases: Vec<(&str, Edit)> = vec![
        ("input", conv(0, "input", serde_json::json!([1.0, -1.0]))),
        ("input", conv(0, "input", serde_json::json!([0.5, 2.0]))),
        ("input", conv(0, "input", serde_json::json!([0.0, 0.0]))),
        ("in_ch", conv(0, "in_ch", serde_json::json!(7))),
        ("k", conv(0, "k", serde_json::json!(2))),
        ("weights", conv(0, "weights", serde_json::json!([0.5]))),
        ("bias", conv(0, "bias", serde_json::json!([]))),
        (
            "convs",
            Box::new(|v| v["refer"][0]["convs"] = serde_json::json!([])),
        ),
        (
            "clip",
            Box::new(|v| v["refer"][0]["clip"] = serde_json::json!(0.0)),
        ),
        (
            "clip",
            Box::new(|v| v["refer"][0]["clip"] = serde_json::json!(-3.0)),
        ),
        (
            "gain",
            Box::new(|v| v["refer"][0]["gain"] = serde_json::json!(-0.25)),
        ),
        (
            "gain",
            Box::new(|v| v["refer"][0]["gain"] = serde_json::json!(1.5)),
        ),
        (
            "clust.ranges",
            Box::new(|v| v["clust"]["ranges"] = serde_json::json!([0.0, 1.0])),
        ),
    ];
    for (field, edit) in cases {
        let mut bad = v.clone();
        edit(&mut bad);
        let e = refqsr::refqsr::Params::parse(&bad.to_string(), Path::new("p.json"), &graph)
            .expect_err(field)
            .to_string();
        assert!(e.contains("p.json") && e.contains(field), "{field}: {e}");
    }
    // NaN is not JSON; a huge number parses to infinity in no field either
    v["refer"][0]["clip"] = serde_json::json!(1e300);
    let e = refqsr::refqsr::Params::parse(&v.to_string(), Path::new("p.json"), &graph);
    assert!(e.is_err(), "1e300 is not a usable f32 clip");
}

#[test]
fn refqsr_parameter_files_of_a_one_by_one_refer_still_load() {
    // files written before RefER was trained hold one 1x1 conv as `input`, `weights`, `bias`
    let graph = span_x4();
    let c = 48;
    let weights: Vec<f32> = (0..c * c).map(|i| (i % 7) as f32 * 0.01).collect();
    let text = std::fs::read_to_string(asset("models/spanx4_ch48.refqsr.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for r in v["refer"].as_array_mut().unwrap() {
        let r = r.as_object_mut().unwrap();
        r.remove("convs");
        r.insert("input".into(), serde_json::json!([-0.5, 0.75]));
        r.insert("weights".into(), serde_json::json!(weights));
        r.insert("bias".into(), serde_json::json!(vec![0.25; c]));
    }
    let p = refqsr::refqsr::Params::parse(&v.to_string(), Path::new("old.json"), &graph).unwrap();
    for r in &p.refer {
        assert_eq!(r.convs.len(), 1);
        let cv = &r.convs[0];
        assert_eq!((cv.k, cv.in_ch, cv.out_ch), (1, c, c));
        assert_eq!(cv.input, [-0.5, 0.75]);
        assert_eq!(cv.weights, weights);
        assert_eq!(cv.bias, vec![0.25; c]);
    }
}

#[test]
fn image_files_never_panic() {
    let photo = image::open(asset("images/chelsea.png"))
        .unwrap()
        .crop_imm(100, 60, 24, 16);
    for (name, format) in [
        ("png", image::ImageFormat::Png),
        ("jpeg", image::ImageFormat::Jpeg),
        ("webp", image::ImageFormat::WebP),
    ] {
        let mut bytes = Vec::new();
        photo
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        fuzz(&format!("image-{name}"), &bytes, false, |b| {
            let _ = refqsr::imageio::decode_bytes(b, Path::new("x.img"));
        });
    }
}

#[test]
fn decompression_bombs_are_refused() {
    // a PNG header claiming 100000 x 100000 pixels
    let mut header = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    header.extend(13u32.to_be_bytes());
    header.extend(&ihdr);
    header.extend(crc.to_be_bytes());
    let e = refqsr::imageio::decode_bytes(&header, Path::new("bomb.png"))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("bomb.png"), "{e}");
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}
