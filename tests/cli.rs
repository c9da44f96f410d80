//! The `refqsr` binary run as a user runs it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{asset, files, save_crop, tempdir};

fn refqsr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_refqsr"))
}

/// A small copy of a shipped photo, so the binary's runs stay quick on software Vulkan.
fn small_photo(dst: &Path, w: u32, h: u32) {
    save_crop("images/coffee.png", (250, 120, w, h), dst);
}

#[test]
fn upscales_a_file() {
    let d = tempdir("file");
    small_photo(&d.join("in.png"), 24, 16);
    let out = refqsr()
        .args(["upscale", "in.png", "-o", "out.webp", "-s", "2"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(d.join("out.webp")).unwrap();
    assert_eq!((img.width(), img.height()), (48, 32));
    assert_eq!(files(&d), ["in.png", "out.webp"], "no temporary files left");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn upscales_a_folder_and_goes_on_past_bad_files() {
    let d = tempdir("folder");
    let src = d.join("src");
    std::fs::create_dir_all(src.join("nested")).unwrap();
    small_photo(&src.join("a.png"), 20, 12);
    small_photo(&src.join("nested/b.jpg"), 12, 20);
    std::fs::write(src.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(src.join("notes.txt"), "ignored").unwrap();
    let out = refqsr()
        .args(["upscale", "src", "-o", "dst", "-s", "2"])
        .current_dir(&d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed file must fail the run");
    assert!(
        stderr.contains("broken.png") && stderr.contains("decode"),
        "{stderr}"
    );
    let a = image::open(d.join("dst/a.png")).unwrap();
    assert_eq!((a.width(), a.height()), (40, 24));
    let b = image::open(d.join("dst/nested/b.jpg")).unwrap();
    assert_eq!((b.width(), b.height()), (24, 40));
    assert_eq!(
        files(&d.join("dst")),
        ["a.png", "nested"],
        "no output for the broken file"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn missing_input_is_an_error() {
    let d = tempdir("missing");
    let out = refqsr()
        .args(["upscale", "nope.png", "-o", "out.png"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope.png"), "{stderr}");
    assert!(files(&d).is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn corrupt_image_leaves_no_output() {
    let d = tempdir("corrupt");
    let mut bytes = std::fs::read(asset("images/chelsea.png")).unwrap();
    bytes.truncate(bytes.len() / 3);
    std::fs::write(d.join("cut.png"), &bytes).unwrap();
    let out = refqsr()
        .args(["upscale", "cut.png", "-o", "out.png"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cut.png"), "{stderr}");
    assert_eq!(files(&d), ["cut.png"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn unwritable_output_is_an_error() {
    let d = tempdir("unwritable");
    small_photo(&d.join("in.png"), 8, 8);
    // Missing parent folders are created (as realesrgan-ncnn-vulkan does); a parent that is
    // a file cannot be.
    let out = refqsr()
        .args(["upscale", "in.png", "-o", "in.png/out.png", "-s", "2"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in.png"), "{stderr}");
    let out = refqsr()
        .args(["upscale", "in.png", "-o", "out.bmp", "-s", "2"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("out.bmp"));
    assert_eq!(files(&d), ["in.png"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_scale_and_adapter_are_errors() {
    let d = tempdir("args");
    small_photo(&d.join("in.png"), 8, 8);
    let out = refqsr()
        .args(["upscale", "in.png", "-o", "o.png", "-s", "3"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("upscales by 3"));
    let out = refqsr()
        .args([
            "upscale",
            "in.png",
            "-o",
            "o.png",
            "--adapter",
            "no-such-gpu",
        ])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-gpu") && stderr.contains("available adapters"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn adapters_lists_at_least_one() {
    let out = refqsr().arg("adapters").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        stdout.contains("0: ") && stdout.contains("driver"),
        "{stdout}"
    );
}

#[test]
fn no_adapter_says_how_to_get_one() {
    // A backend this machine does not have stands in for a machine without any GPU driver.
    let backend = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    let out = refqsr()
        .arg("adapters")
        .env("WGPU_BACKEND", backend)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no GPU adapter found") && stderr.contains("mesa-vulkan-drivers"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn eval_reports_the_paper_metrics() {
    let d = tempdir("eval");
    std::fs::create_dir_all(d.join("hr")).unwrap();
    small_photo(&d.join("hr/a.png"), 96, 64);
    let out = refqsr()
        .args([
            "eval",
            "--hr",
            "hr",
            "--modes",
            "fp32,w8a8,w4a4",
            "--bounds",
            "searched,minmax",
            "--json",
            "e.json",
        ])
        .current_dir(&d)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| fp32 |") && stdout.contains("PSNR-Y"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("e.json")).unwrap()).unwrap();
    let row = &json["rows"][0];
    assert_eq!(row["mode"], "fp32");
    assert_eq!(row["images"], 1);
    let psnr = row["psnr_y"].as_f64().unwrap();
    let ssim = row["ssim_y"].as_f64().unwrap();
    assert!(
        (20.0..50.0).contains(&psnr) && (0.5..=1.0).contains(&ssim),
        "{row}"
    );
    assert_eq!(row["fqr"], 32.0);
    assert!(row["bitops_g"].as_f64().unwrap() > row["bitops_body_g"].as_f64().unwrap());
    // fp32, then each integer mode once per bounds choice
    let rows = json["rows"].as_array().unwrap();
    let key = |r: &serde_json::Value| (r["mode"].to_string(), r["bounds"].to_string());
    let keys: Vec<_> = rows.iter().map(key).collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert_eq!(rows[1]["mode"], "w8a8");
    assert_eq!(rows[1]["bounds"], "searched");
    assert_eq!(rows[2]["bounds"], "minmax");
    let p = |i: usize| rows[i]["psnr_y"].as_f64().unwrap();
    // w8a8 stays close to fp32 and clearly above w4a4; the integer rows count integer BitOPs
    assert!(p(1) > p(0) - 1.0 && p(1) > p(3) && p(2) > p(4), "{rows:?}");
    // w8a8 runs the shipped spec: 8 bits, but f32 for the layers whose floor says so. SPAN's
    // body layers all read 48 channels at the input size, so FQR is their mean bit-width.
    let calib: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("assets/models/spanx4_ch48.calib.json").unwrap(),
    )
    .unwrap();
    let layers = calib["layers"].as_array().unwrap();
    let float = layers
        .iter()
        .filter(|l| l["floor"] == serde_json::json!([32, 32]))
        .count();
    let want = (8 * (layers.len() - float) + 32 * float) as f64 / layers.len() as f64;
    let fqr8 = rows[1]["fqr"].as_f64().unwrap();
    assert!(
        (fqr8 - want).abs() < 1e-9,
        "w8a8 FQR {fqr8}, {float} float layers"
    );
    // w4a4 runs the shipped per-layer spec: some layers kept at 6 or 8 bits (their floors)
    let fqr = rows[3]["fqr"].as_f64().unwrap();
    assert!((4.0..8.0).contains(&fqr), "{fqr}");
    let body = |i: usize| rows[i]["bitops_body_g"].as_f64().unwrap();
    // 32x32 against 8x8 bits: 16x fewer body BitOPs, less where layers stay in f32
    let ratio = body(0) / body(1);
    if float == 0 {
        assert!((ratio - 16.0).abs() < 1e-9, "{rows:?}");
    } else {
        assert!(ratio > 1.0 && ratio < 16.0, "{rows:?}");
    }
    // per image: the scores the means are made of, and the worst loss against fp32 taken
    // from them
    assert_eq!(json["images"].as_array().unwrap().len(), 1);
    for r in rows {
        let each = r["per_image_psnr_y"].as_array().unwrap();
        assert_eq!(each.len(), 1, "{r}");
        assert_eq!(each[0].as_f64().unwrap(), r["psnr_y"].as_f64().unwrap());
        let worst = r["worst_vs_fp32_db"].as_f64().unwrap();
        assert!(
            (worst - (r["psnr_y"].as_f64().unwrap() - p(0))).abs() < 1e-9,
            "{r}"
        );
        assert!(r["seam_db"].as_f64().unwrap().is_finite(), "{r}");
    }
    // against the fp32 output: none for fp32 itself; 8 bits far closer to it than to the HR
    // image (their error is a fraction of the model's) and closer than 4 bits
    let fidelity = |i: usize| rows[i]["psnr_y_vs_fp32_output"].as_f64();
    assert_eq!(fidelity(0), None, "{rows:?}");
    let (f8, f4) = (fidelity(1).unwrap(), fidelity(3).unwrap());
    assert!(f8 > p(1) + 6.0 && f8 > f4 && f8 < 100.0, "{rows:?}");

    assert!(
        body(1) / body(3) > 1.0 && body(1) / body(3) <= 4.0,
        "{rows:?}"
    );

    let out = refqsr()
        .args(["eval", "--hr", "hr", "--modes", "fp32,fp16"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown mode `fp16`") && stderr.contains("wXaY"),
        "{stderr}"
    );
    // RefQSR rows: the method, its three ablations, the share of references
    let out = refqsr()
        .args([
            "eval",
            "--hr",
            "hr",
            "--modes",
            "refqsr:8-4",
            "--json",
            "r.json",
        ])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("r.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{json}");
    let ablations: Vec<_> = rows.iter().map(|r| r["ablation"].clone()).collect();
    assert_eq!(ablations[0], serde_json::Value::Null);
    assert!(ablations.contains(&serde_json::json!("self-reference")));
    let share = rows[0]["reference_share"].as_f64().unwrap();
    assert!(share > 0.0 && share <= 1.0, "{share}");
    assert!(rows[0]["clustering_bitops_g"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn calibrate_then_upscale_any_model_in_integer_modes() {
    // A model other than the shipped one: no calibration until `calibrate` writes one.
    let d = tempdir("calibrate");
    for ext in ["param", "bin"] {
        std::fs::copy(
            asset(&format!("models/realesr-animevideov3-x4.{ext}")),
            d.join(format!("m.{ext}")),
        )
        .unwrap();
    }
    std::fs::create_dir_all(d.join("cal")).unwrap();
    small_photo(&d.join("cal/a.png"), 40, 32);
    std::fs::write(d.join("cal/broken.png"), b"not a png").unwrap();
    small_photo(&d.join("in.png"), 24, 20);
    let upscale = |mode: &str, extra: &[&str]| {
        refqsr()
            .args(["upscale", "in.png", "-o", "out.png", "-m", "m.param"])
            .args(["--mode", mode])
            .args(extra)
            .current_dir(&d)
            .output()
            .unwrap()
    };
    let out = upscale("w8a8", &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("m.calib.json") && stderr.contains("refqsr calibrate"),
        "{stderr}"
    );

    let calibrate = |extra: &[&str]| {
        refqsr()
            .args(["calibrate", "-m", "m.param", "--images", "cal"])
            .args(extra)
            .current_dir(&d)
            .output()
            .unwrap()
    };
    // a short reconstruction: the 40x32 photo is smaller than the default crop
    let out = calibrate(&[
        "--recon-steps",
        "3",
        "--round-modes",
        "w6a6",
        "--code-steps",
        "2",
        "--code-modes",
        "w4a4",
        "--refer-steps",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // the broken file is named and skipped, the run still writes the calibration
    assert!(stderr.contains("broken.png"), "{stderr}");
    assert!(stderr.contains("w4a4 reconstruction of"), "{stderr}");
    // then the weight codes, chosen, then learned
    assert!(stderr.contains("w6a6 weight codes of"), "{stderr}");
    assert!(stderr.contains("w4a4 learned weight codes of"), "{stderr}");
    // a fresh calibration measures each layer's precision floor without being asked
    assert!(stderr.contains("precision floors of"), "{stderr}");
    assert!(!stderr.contains("no precision floors"), "{stderr}");
    assert!(d.join("m.calib.json").exists(), "{stderr}");
    assert!(d.join("m.refqsr.json").exists(), "{stderr}");
    assert!(stderr.contains("RefER trained on"), "{stderr}");
    // --bounds-only writes the bounds and not RefQSR's parameters, and still says what it
    // skipped with a failing exit
    let out = calibrate(&[
        "--bounds-only",
        "-o",
        "b.calib.json",
        "--recon-steps",
        "0",
        "--code-modes",
        "none",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("broken.png"),
        "{stderr}"
    );
    assert!(d.join("b.calib.json").exists(), "{stderr}");
    assert!(!d.join("b.refqsr.json").exists(), "{stderr}");
    // --recon-only learns the steps of an existing calibration and fits nothing else
    let out = calibrate(&[
        "--recon-only",
        "-o",
        "b.calib.json",
        "--recon-steps",
        "2",
        "--recon-modes",
        "w6a6,w4a3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("w6a6 reconstruction of"), "{stderr}");
    assert!(stderr.contains("w4a3 reconstruction of"), "{stderr}");
    assert!(!stderr.contains("w4a4 reconstruction"), "{stderr}");
    // --round-only chooses the weight codes of an existing calibration and fits nothing else
    let out = calibrate(&[
        "--round-only",
        "-o",
        "b.calib.json",
        "--round-modes",
        "w6a6",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("w6a6 weight codes of"), "{stderr}");
    assert!(!stderr.contains("reconstruction"), "{stderr}");
    assert!(!stderr.contains("learned weight codes"), "{stderr}");
    assert!(!d.join("b.refqsr.json").exists(), "{stderr}");
    // --codes-only learns the weight codes of an existing calibration and fits nothing else
    let out = calibrate(&[
        "--codes-only",
        "-o",
        "b.calib.json",
        "--code-modes",
        "w4a3",
        "--code-steps",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("w4a3 learned weight codes of"), "{stderr}");
    assert!(!stderr.contains("reconstruction"), "{stderr}");
    assert!(!stderr.contains("w6a6 weight codes"), "{stderr}");
    assert!(!d.join("b.refqsr.json").exists(), "{stderr}");
    // fp32 has nothing to learn: an error, not a panic
    let out = calibrate(&[
        "--recon-only",
        "-o",
        "b.calib.json",
        "--recon-modes",
        "fp32",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("error") && stderr.contains("not fp32"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!d.join("b.refqsr.json").exists(), "{stderr}");
    for mode in ["w8a8", "w5a3"] {
        let _ = std::fs::remove_file(d.join("out.png"));
        let out = upscale(mode, &[]);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let img = image::open(d.join("out.png")).unwrap();
        assert_eq!((img.width(), img.height()), (96, 80));
    }

    // The sensitivity report on the calibration just written: its all-layers w8a8 figure
    // must be what the two upscales measure against each other (8-bit PNGs here, float
    // outputs there: within rounding), and it must order the bit-widths as quantization does.
    let out = calibrate(&[
        "--report",
        "r.json",
        "--report-only",
        "--report-patches",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("| all (wXaX) |"), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(r["format"], "refqsr-sensitivity-1");
    let layers = r["layers"].as_array().unwrap();
    let calib: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("m.calib.json")).unwrap()).unwrap();
    assert_eq!(layers.len(), calib["layers"].as_array().unwrap().len());
    // every layer has one input step per channel at every bit-width, over code ranges with 0:
    // one per channel at 4 bits and below, one for all above
    for l in calib["layers"].as_array().unwrap() {
        let in_ch = l["in_ch"].as_u64().unwrap();
        for bits in 2..=8u32 {
            let ch = &l["channels"][bits.to_string()];
            let lo = ch["lo"].as_array().unwrap();
            let want = if bits <= 4 { in_ch } else { 1 };
            assert_eq!(lo.len() as u64, want, "{bits}: {l}");
            for lo in lo.iter().map(|v| v.as_i64().unwrap()) {
                assert!((-(1i64 << bits) + 1..=0).contains(&lo), "{bits}: {l}");
            }
            let steps = ch["steps"].as_array().unwrap();
            assert_eq!(steps.len() as u64, in_ch);
            assert!(steps.iter().all(|s| s.as_f64().unwrap() > 0.0));
        }
    }
    let db = |v: &serde_json::Value, bits: &str| v[bits].as_f64().unwrap_or(f64::INFINITY);
    for l in layers {
        for part in ["activations", "weights_only"] {
            assert!(db(&l[part], "8") > db(&l[part], "4"), "{part}: {l}");
            // every layer with both parts quantized costs more than one part of one layer
            for bits in ["8", "6", "4"] {
                assert!(
                    db(&r["all"], bits) <= db(&l[part], bits) + 0.5,
                    "{bits}: {l}"
                );
            }
        }
    }
    // the floors land in the calibration the upscales below read
    let calib: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("m.calib.json")).unwrap()).unwrap();
    let floors = calib["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("floor").is_some())
        .count();
    let wanted = layers
        .iter()
        .filter(|l| l["floor"] != serde_json::json!([4, 4]))
        .count();
    assert_eq!(floors, wanted);
    let rgb = |mode: &str| {
        let _ = std::fs::remove_file(d.join("out.png"));
        let _ = std::fs::copy(d.join("cal/a.png"), d.join("in.png"));
        assert!(upscale(mode, &[]).status.success());
        image::open(d.join("out.png")).unwrap().to_rgb8().into_raw()
    };
    let (q, f) = (rgb("w8a8"), rgb("fp32"));
    let mse = q
        .iter()
        .zip(&f)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum::<f64>()
        / q.len() as f64;
    let measured = 10.0 * (255.0f64 * 255.0 / mse).log10();
    let reported = db(&r["all"], "8");
    // each 8-bit PNG adds an independent rounding error of variance 1/12 level^2
    let levels2 = 255.0f64 * 255.0 * 10f64.powf(-reported / 10.0);
    let expected = 10.0 * (255.0f64 * 255.0 / (levels2 + 2.0 / 12.0)).log10();
    assert!(
        (measured - expected).abs() < 0.3,
        "report says w8a8 is {reported:.2} dB from fp32 ({expected:.2} dB after two 8-bit \
         roundings), the upscales measure {measured:.2}"
    );
    small_photo(&d.join("in.png"), 24, 20);

    // a calibration of another model, and a damaged one: clear errors naming the file
    std::fs::write(
        d.join("span.json"),
        std::fs::read(asset("models/spanx4_ch48.calib.json")).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(d.join("m.calib.json")).unwrap();
    std::fs::write(d.join("cut.json"), &text[..text.len() / 2]).unwrap();
    for (file, want) in [("span.json", "layers"), ("cut.json", "not a calibration")] {
        let _ = std::fs::remove_file(d.join("out.png"));
        let out = upscale("w8a8", &["--calibration", file]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(file) && stderr.contains(want),
            "{file}: {stderr}"
        );
        assert!(!d.join("out.png").exists());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bench_writes_results_that_compare_reads_and_skips_bad_files() {
    let d = tempdir("bench");
    let out = refqsr()
        .args([
            "bench",
            "--modes",
            "fp32,refqsr:8-4",
            "--sizes",
            "144x96",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--json",
            "b.json",
            "--plot",
            "b.svg",
            "--image",
        ])
        .arg(asset("images/astronaut.png"))
        .env("REFQSR_CACHE_DIR", &d)
        .current_dir(&d)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("measured peak"), "{stderr}");
    for want in ["| fp32 |", "| refqsr:8-4 |", "cost_volume", "query_body"] {
        assert!(stdout.contains(want), "no `{want}` in:\n{stdout}");
    }
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("b.json")).unwrap()).unwrap();
    assert_eq!(file["schema"], "refqsr-bench-1");
    let r = &file["results"][1];
    for field in [
        "adapter",
        "model",
        "date",
        "tool_version",
        "memory_bytes",
        "gops",
    ] {
        assert!(!r[field].is_null(), "{field} missing in {r}");
    }
    assert_eq!(r["mode"], "refqsr:8-4");
    assert!(r["adapter"]["int_dot"].is_string() && r["adapter"]["driver"].is_string());
    let svg = std::fs::read_to_string(d.join("b.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("refqsr:8-4"));

    // another version's file and a file with a field missing are named and skipped
    std::fs::write(
        d.join("old.json"),
        r#"{"schema": "refqsr-bench-0", "results": []}"#,
    )
    .unwrap();
    let mut broken = file.clone();
    broken["results"][0]
        .as_object_mut()
        .unwrap()
        .remove("median_ms");
    std::fs::write(d.join("broken.json"), broken.to_string()).unwrap();
    let out = refqsr()
        .args([
            "bench",
            "--compare",
            "old.json",
            "b.json",
            "broken.json",
            "missing.json",
        ])
        .current_dir(&d)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "skipped files make a failing exit");
    assert!(
        stdout.contains("| refqsr:8-4 |"),
        "the good file is still reported:\n{stdout}"
    );
    for (file, why) in [
        ("old.json", "refqsr-bench-0"),
        ("broken.json", "median_ms"),
        ("missing.json", "missing.json"),
    ] {
        assert!(
            stderr.lines().any(|l| l.contains(file) && l.contains(why)),
            "{file} not named with `{why}`:\n{stderr}"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bench_refuses_unknown_adapters_and_empty_sizes() {
    let out = refqsr()
        .args(["bench", "--adapter", "no-such-gpu", "--sizes", "16x16"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no-such-gpu") && stderr.contains("0: "),
        "the adapters are listed:\n{stderr}"
    );
    let out = refqsr()
        .args(["bench", "--sizes", "0x256"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("0x256"), "{stderr}");
}

#[test]
fn ctrl_c_reports_what_was_measured_so_far() {
    use std::io::{BufRead, BufReader};
    let d = tempdir("interrupt");
    let mut child = refqsr()
        .args([
            "bench",
            "--modes",
            "fp32,w8a8",
            "--sizes",
            "48x48",
            "--runs",
            "2000",
            "--warmup",
            "0",
            "--json",
            "b.json",
            "--image",
        ])
        .arg(asset("images/astronaut.png"))
        .env("REFQSR_CACHE_DIR", &d)
        .current_dir(&d)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // interrupt once runs of fp32 are observed being measured (without a terminal the bench
    // prints a line of its progress every second)
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen
        .lines()
        .any(|l| l.contains("fp32") && l.contains("run(s) done"))
    {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "bench ended early:\n{seen}"
        );
        seen += &line;
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(
        stdout.contains("| fp32 |") && !stdout.contains("| w8a8 |"),
        "{stdout}"
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("b.json")).unwrap()).unwrap();
    assert_eq!(file["partial"], true);
    let runs = file["results"][0]["runs"].as_u64().unwrap();
    assert!((1..2000).contains(&runs), "{runs} runs");
    std::fs::remove_dir_all(&d).unwrap();
}
