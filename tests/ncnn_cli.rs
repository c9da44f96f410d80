//! `refqsr` spawned with realesrgan-ncnn-vulkan's / upscayl-bin's command line, as their GUIs
//! spawn it: sizes, formats, folders, progress lines and the words GUIs parse, and every bad
//! argument a clear "Error" with nothing written.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{asset, files, run_refqsr, save_crop, tempdir};

fn photo(dst: &Path, w: u32, h: u32) {
    save_crop("images/coffee.png", (250, 120, w, h), dst);
}

fn run(dir: &Path, args: &[&str]) -> (Output, String) {
    run_refqsr(dir, "", args)
}

fn size(p: &Path) -> (u32, u32) {
    image::image_dimensions(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// What a GUI reads on a good run: progress from 0.00% to 100.00% as `%.2f%%` lines, a final
/// "Successful", and none of the words GUIs take for failure.
fn assert_clean_success(out: &Output, stderr: &str) {
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let progress: Vec<&str> = lines.iter().copied().filter(|l| l.ends_with('%')).collect();
    assert_eq!(progress.first(), Some(&"0.00%"), "{stderr}");
    assert_eq!(progress.last(), Some(&"100.00%"), "{stderr}");
    for p in &progress {
        let v: f64 = p.trim_end_matches('%').parse().expect("NN.NN%");
        assert!((0.0..=100.0).contains(&v) && p.split('.').nth(1).unwrap().len() == 3);
    }
    assert!(lines.last().unwrap().contains("Successful"), "{stderr}");
    for word in ["Error", "failed", "read ", "write "] {
        assert!(!stderr.contains(word), "`{word}` in a good run: {stderr}");
    }
}

/// What a GUI reads on a failure: "Error" naming `what`, a non-zero exit.
fn assert_error(out: &Output, stderr: &str, what: &str) {
    assert!(!out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("Error"))
        .unwrap_or_else(|| panic!("no Error line: {stderr}"));
    assert!(stderr.contains(what), "`{what}` not named in: {line}");
}

#[test]
fn file_to_file_with_their_flags() {
    let d = tempdir("file");
    photo(&d.join("in.png"), 20, 14);
    // the shipped x4 model, default scale
    let (out, err) = run(&d, &["-i", "in.png", "-o", "out.png"]);
    assert_clean_success(&out, &err);
    assert_eq!(size(&d.join("out.png")), (80, 56));
    // -s differs from the model's scale: resampled, and said so
    let (out, err) = run(&d, &["-i", "in.png", "-o", "s3.png", "-s", "3", "-t", "0"]);
    assert_clean_success(&out, &err);
    assert!(err.contains("Resizing"), "{err}");
    assert_eq!(size(&d.join("s3.png")), (60, 42));
    // -s 2 picks the shipped x2 model: no resampling
    let (out, err) = run(&d, &["-i", "in.png", "-o", "s2.webp", "-s", "2"]);
    assert_clean_success(&out, &err);
    assert!(!err.contains("Resizing"), "{err}");
    assert_eq!(size(&d.join("s2.webp")), (40, 28));
    // -w keeps the aspect ratio, -r sets both
    let (out, err) = run(&d, &["-i", "in.png", "-o", "w.png", "-w", "50"]);
    assert_clean_success(&out, &err);
    assert_eq!(size(&d.join("w.png")), (50, 35));
    let (out, err) = run(
        &d,
        &["-i", "in.png", "-o", "r.jpg", "-r", "33x17", "-c", "20"],
    );
    assert_clean_success(&out, &err);
    assert_eq!(size(&d.join("r.jpg")), (33, 17));
    // missing parent folders are created; -o the input itself replaces it
    let (out, err) = run(&d, &["-i", "in.png", "-o", "new/deep/out.png", "-v"]);
    assert_clean_success(&out, &err);
    assert!(d.join("new/deep/out.png").is_file());
    std::fs::copy(d.join("in.png"), d.join("same.png")).unwrap();
    let (out, err) = run(&d, &["-i", "same.png", "-o", "same.png", "-s", "2"]);
    assert_clean_success(&out, &err);
    assert_eq!(size(&d.join("same.png")), (40, 28));
    // -h prints the usage
    let (out, err) = run(&d, &["-h"]);
    assert!(
        out.status.success() && err.contains("-i input-path"),
        "{err}"
    );
    assert!(
        !files(&d).iter().any(|f| f.ends_with(".tmp")),
        "{:?}",
        files(&d)
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn folder_to_folder_goes_on_past_a_bad_image() {
    let d = tempdir("folder");
    let src = d.join("in");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    photo(&src.join("a.png"), 12, 10);
    photo(&src.join("sub/b.jpg"), 10, 12);
    let (out, err) = run(
        &d,
        &[
            "-i", "in", "-o", "out/x", "-f", "webp", "-s", "2", "-j", "2:2:2",
        ],
    );
    assert_clean_success(&out, &err);
    assert_eq!(err.lines().filter(|l| *l == "100.00%").count(), 2, "{err}");
    assert_eq!(size(&d.join("out/x/a.webp")), (24, 20));
    assert_eq!(size(&d.join("out/x/sub/b.webp")), (20, 24));
    std::fs::write(src.join("bad.png"), b"\x89PNG\r\n\x1a\nnot an image").unwrap();
    let (out, err) = run(&d, &["-i", "in", "-o", "out2", "-s", "2"]);
    assert_error(&out, &err, "bad.png");
    assert_eq!(
        files(&d.join("out2")),
        ["a.png", "sub"],
        "the good ones are written"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_arguments_are_errors_with_nothing_written() {
    let d = tempdir("bad");
    photo(&d.join("in.png"), 8, 8);
    let cases: &[(&[&str], &str)] = &[
        (&["-q"], "-q"),
        (&["-t", "16"], "16"),
        (&["-t", "abc"], "abc"),
        (&["-g", "7"], "invalid GPU device 7"),
        (&["-s", "0"], "`0`"),
        (&["-f", "bmp"], "bmp"),
        (&["-c", "101"], "101"),
        (&["-j", "1:x:2"], "1:x:2"),
        (&["-w", "-3"], "-3"),
        (&["-r", "40"], "40"),
        (&["-m", ".", "-n", "nosuchmodel"], "nosuchmodel"),
        (&["-m", "no/such/dir", "-n", "x"], "no/such/dir"),
        (&["-z", "2"], "(-z)"),
    ];
    for (extra, what) in cases {
        let mut args = vec!["-i", "in.png", "-o", "out.png"];
        if *what == "(-z)" {
            // a x4 model asked for as x2
            args.extend(["-m", "models"]);
            std::fs::create_dir_all(d.join("models")).unwrap();
            for ext in ["param", "bin"] {
                std::fs::copy(
                    asset(&format!("models/spanx4_ch48.{ext}")),
                    d.join(format!("models/m.{ext}")),
                )
                .unwrap();
            }
            args.extend(["-n", "m"]);
        }
        args.extend(extra.iter());
        let (out, err) = run(&d, &args);
        assert_error(&out, &err, what);
        assert!(!d.join("out.png").exists(), "{args:?} wrote an output");
    }
    // a corrupt input
    std::fs::write(d.join("cut.png"), b"\x89PNG\r\n\x1a\n\0\0").unwrap();
    let (out, err) = run(&d, &["-i", "cut.png", "-o", "cut_out.png"]);
    assert_error(&out, &err, "cut.png");
    assert!(!d.join("cut_out.png").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn models_folder_is_also_looked_up_beside_the_executable() {
    let d = tempdir("exe");
    let bin = d.join("bin");
    std::fs::create_dir_all(bin.join("models")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_refqsr"), bin.join("refqsr")).unwrap();
    // NAME-xS.param is preferred over NAME.param
    for ext in ["param", "bin"] {
        std::fs::copy(
            asset(&format!("models/spanx2_ch48.{ext}")),
            bin.join(format!("models/span-x2.{ext}")),
        )
        .unwrap();
    }
    photo(&d.join("in.png"), 8, 6);
    let out = Command::new(bin.join("refqsr"))
        .args([
            "-i", "in.png", "-o", "o.png", "-m", "models", "-n", "span", "-s", "2",
        ])
        .current_dir(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_clean_success(&out, &err);
    assert!(err.contains("span-x2"), "{err}");
    assert_eq!(size(&d.join("o.png")), (16, 12));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A JPEG whose EXIF says "rotate 90 clockwise to display" (orientation 6), as phones write.
fn rotated_jpeg(dst: &Path, w: u32, h: u32) {
    let img = image::open(asset("images/coffee.png"))
        .unwrap()
        .crop_imm(250, 120, w, h)
        .to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&img)
        .unwrap();
    // APP1 Exif: little-endian TIFF header, one IFD entry: Orientation (0x0112), SHORT, 6.
    let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0".to_vec();
    let mut app1 = b"Exif\0\0".to_vec();
    app1.append(&mut tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend([0xFF, 0xE1]);
    out.extend(len.to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    std::fs::write(dst, out).unwrap();
}

#[test]
fn exif_orientation_is_applied() {
    let d = tempdir("exif");
    rotated_jpeg(&d.join("phone.jpg"), 12, 8);
    let (out, err) = run(&d, &["-i", "phone.jpg", "-o", "up.png", "-s", "2"]);
    assert_clean_success(&out, &err);
    assert_eq!(size(&d.join("up.png")), (16, 24), "portrait, as displayed");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn icc_profile_is_kept() {
    let d = tempdir("icc");
    let img = image::open(asset("images/coffee.png"))
        .unwrap()
        .crop_imm(250, 120, 8, 8)
        .to_rgb8();
    let profile: Vec<u8> = (0..200u8).collect();
    let mut enc =
        image::codecs::png::PngEncoder::new(std::fs::File::create(d.join("p.png")).unwrap());
    use image::ImageEncoder;
    enc.set_icc_profile(profile.clone()).unwrap();
    enc.write_image(&img, 8, 8, image::ExtendedColorType::Rgb8)
        .unwrap();
    for o in ["o.png", "o.jpg"] {
        let (out, err) = run(&d, &["-i", "p.png", "-o", o, "-s", "2"]);
        assert_clean_success(&out, &err);
        use image::ImageDecoder;
        let mut dec = image::ImageReader::open(d.join(o))
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap();
        assert_eq!(dec.icc_profile().unwrap(), Some(profile.clone()), "{o}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn tta_commutes_with_flipping_the_input() {
    // TTA averages the eight flips and transposes, so flipping the input flips the output
    // (up to the order of the float sums: one 8-bit level).
    let d = tempdir("tta");
    photo(&d.join("a.png"), 10, 7);
    image::open(d.join("a.png"))
        .unwrap()
        .fliph()
        .save(d.join("b.png"))
        .unwrap();
    for (i, o) in [("a.png", "ta.png"), ("b.png", "tb.png")] {
        let (out, err) = run(&d, &["-i", i, "-o", o, "-s", "2", "-x"]);
        assert_clean_success(&out, &err);
    }
    let ta = image::open(d.join("ta.png")).unwrap().fliph().to_rgb8();
    let tb = image::open(d.join("tb.png")).unwrap().to_rgb8();
    let worst = ta
        .as_raw()
        .iter()
        .zip(tb.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "flip(tta(x)) vs tta(flip(x)): {worst} levels");
    // and TTA is not the plain run
    let (out, err) = run(&d, &["-i", "a.png", "-o", "plain.png", "-s", "2"]);
    assert_clean_success(&out, &err);
    let plain = image::open(d.join("plain.png")).unwrap().to_rgb8();
    let tta = image::open(d.join("ta.png")).unwrap().to_rgb8();
    assert_ne!(plain.as_raw(), tta.as_raw());
    std::fs::remove_dir_all(&d).unwrap();
}
