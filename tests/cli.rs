//! The `refqsr` binary run as a user runs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::asset;

fn refqsr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_refqsr"))
}

fn tempdir(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("refqsr-cli-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small copy of a shipped photo, so the binary's runs stay quick on software Vulkan.
fn small_photo(dst: &Path, w: u32, h: u32) {
    let img = image::open(asset("images/coffee.png")).unwrap();
    img.crop_imm(250, 120, w, h).save(dst).unwrap();
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
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
    let out = refqsr()
        .args(["upscale", "in.png", "-o", "no/such/dir/out.png", "-s", "2"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no/such/dir/out.png"), "{stderr}");
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
        .args(["eval", "--hr", "hr", "--modes", "fp32", "--json", "e.json"])
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
    let out = refqsr()
        .args(["eval", "--hr", "hr", "--modes", "w8a8"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not implemented"));
    std::fs::remove_dir_all(&d).unwrap();
}
