//! Folder jobs that survive: every failure (corrupt files, an output too large for its format,
//! an out-of-memory image) is reported and the other images are written; nothing partial is
//! left; `--skip-existing` resumes; `--shard I/N` splits a folder disjointly and completely.

mod common;

use common::{run_refqsr, tempdir};
use std::collections::BTreeSet;
use std::path::Path;

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

fn refqsr(dir: &Path, fault: &str, args: &[&str]) -> (bool, String) {
    let (out, err) = run_refqsr(dir, fault, args);
    (out.status.success(), err)
}

/// 93 good images, 5 corrupt ones, one whose x2 output is too wide for WebP and one large
/// enough that, with every buffer over 100 kB failing, even its smallest tiles run out of
/// memory (the small images' buffers stay under that).
fn folder(src: &Path) -> (Vec<String>, Vec<String>) {
    let photo = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/images/coffee.png"))
        .unwrap();
    let mut good = Vec::new();
    for i in 0..93u32 {
        let name = format!("{}/img{i:03}.png", ["a", "b", "c"][i as usize % 3]);
        std::fs::create_dir_all(src.join(&name).parent().unwrap()).unwrap();
        photo
            .crop_imm(10 + 3 * i, 20 + 2 * i, 6 + i % 5, 5 + i % 4)
            .save(src.join(&name))
            .unwrap();
        good.push(name);
    }
    let mut bad = Vec::new();
    for i in 0..5 {
        let name = format!("corrupt{i}.png");
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        bytes.extend((0..40 * (i + 1)).map(|k| (k * 37 + i) as u8));
        std::fs::write(src.join(&name), bytes).unwrap();
        bad.push(name);
    }
    image::RgbImage::from_fn(8200, 2, |x, y| {
        image::Rgb([(x % 251) as u8, 80, (y * 90) as u8])
    })
    .save(src.join("wide.webp"))
    .unwrap();
    bad.push("wide.webp".into());
    photo
        .crop_imm(0, 0, 200, 160)
        .save(src.join("big.png"))
        .unwrap();
    bad.push("big.png".into());
    (good, bad)
}

#[test]
fn a_folder_job_survives_every_failure_and_resumes() {
    let d = tempdir("survive");
    let (good, bad) = folder(&d.join("src"));
    let args = ["upscale", "src", "-o", "dst", "-s", "2"];
    let (ok, err) = refqsr(&d, "oom-above:100000", &args);
    assert!(!ok, "failures make the exit status non-zero");
    // every failure is named with its reason
    for name in &bad {
        assert!(err.contains(name.as_str()), "{name} not reported: {err}");
    }
    assert!(err.contains("16383"), "the WebP limit is named: {err}");
    assert!(err.contains("out of memory"), "{err}");
    assert!(err.contains("93 written, 7 failed, 0 skipped"), "{err}");
    let want: BTreeSet<String> = good.iter().cloned().collect();
    assert_eq!(
        tree(&d.join("dst")),
        want,
        "exactly the good images, nothing partial"
    );
    for name in &good {
        let (w, h) = image::image_dimensions(d.join("src").join(name)).unwrap();
        assert_eq!(
            image::image_dimensions(d.join("dst").join(name)).unwrap(),
            (2 * w, 2 * h),
            "{name}"
        );
    }
    // resume: the finished outputs are left alone, the failures are tried again
    let stamp = std::fs::metadata(d.join("dst").join(&good[0]))
        .unwrap()
        .modified()
        .unwrap();
    let mut resume = args.to_vec();
    resume.push("--skip-existing");
    let (ok, err) = refqsr(&d, "oom-above:100000", &resume);
    assert!(!ok);
    assert!(err.contains("0 written, 7 failed, 93 skipped"), "{err}");
    let again = std::fs::metadata(d.join("dst").join(&good[0]))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp, again, "a finished output is not redone");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn shards_are_disjoint_and_complete() {
    let d = tempdir("shard");
    let src = d.join("src");
    std::fs::create_dir_all(src.join("x")).unwrap();
    let photo =
        image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/images/chelsea.png"))
            .unwrap();
    for i in 0..24u32 {
        photo
            .crop_imm(5 * i, 7, 5, 4)
            .save(src.join(format!("{}p{i}.png", if i % 2 == 0 { "x/" } else { "" })))
            .unwrap();
    }
    let n = 3;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut sizes = Vec::new();
    for i in 0..n {
        let out = format!("out{i}");
        let (ok, err) = refqsr(
            &d,
            "",
            &[
                "upscale",
                "src",
                "-o",
                &out,
                "-s",
                "2",
                "--shard",
                &format!("{i}/{n}"),
            ],
        );
        assert!(ok, "{err}");
        let files = if d.join(&out).exists() {
            tree(&d.join(&out))
        } else {
            BTreeSet::new()
        };
        sizes.push(files.len());
        for f in files {
            assert!(seen.insert(f.clone()), "{f} is in two shards");
        }
    }
    assert_eq!(seen, tree(&src), "the shards together cover the folder");
    assert!(
        sizes.iter().all(|&s| s > 0),
        "every shard has work: {sizes:?}"
    );
    // the same split on a second run
    let (ok, _) = refqsr(
        &d,
        "",
        &["upscale", "src", "-o", "again", "-s", "2", "--shard", "0/3"],
    );
    assert!(ok);
    assert_eq!(tree(&d.join("again")), tree(&d.join("out0")));
    // bad shards are errors
    for s in ["3/3", "1/0", "x/2", "2"] {
        let (ok, err) = refqsr(
            &d,
            "",
            &["upscale", "src", "-o", "bad", "-s", "2", "--shard", s],
        );
        assert!(!ok && err.contains(s), "--shard {s}: {err}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
