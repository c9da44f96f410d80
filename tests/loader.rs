//! The ncnn loader on the shipped models and on broken files.

mod common;

use std::path::{Path, PathBuf};

use common::asset;
use refqsr::model::{ncnn, Graph, Op};

fn model(name: &str) -> (PathBuf, PathBuf) {
    (
        asset(&format!("models/{name}.param")),
        asset(&format!("models/{name}.bin")),
    )
}

#[test]
fn loads_every_shipped_model_with_the_right_shape() {
    for (name, scale, convs) in [
        ("spanx4_ch48", 4, 21),
        ("spanx2_ch48", 2, 21),
        ("spanx4_ch52", 4, 21),
        ("spanx2_ch52", 2, 21),
        ("realesr-animevideov3-x4", 4, 18),
    ] {
        let (p, b) = model(name);
        let g = Graph::load_ncnn(&p, &b).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(g.scale(), scale, "{name}");
        assert_eq!(g.input_channels(), 3);
        assert_eq!(g.values[g.output].channels, 3);
        let n_conv = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Conv(_)))
            .count();
        assert!(n_conv >= convs, "{name}: {n_conv} convolutions");
    }
}

#[test]
fn fusion_folds_span_blocks_into_convolutions() {
    let (p, b) = model("spanx4_ch48");
    let raw = ncnn::load(&p, &b).unwrap();
    let fused = Graph::load_ncnn(&p, &b).unwrap();
    // 6 blocks x (2 swish + sigmoid/sub/add/mul) fold away.
    assert_eq!(raw.nodes.len() - fused.nodes.len(), 6 * 2 + 6 * 4);
    assert!(fused.nodes.iter().all(|n| !matches!(n.op, Op::Act(_))));
    assert_eq!(fused.receptive_radius(), 21);
}

/// Write a broken copy of a model into a temp dir and return the loader's error text.
fn broken(edit: impl FnOnce(&mut String, &mut Vec<u8>)) -> String {
    let (p, b) = model("spanx2_ch48");
    let mut param = std::fs::read_to_string(p).unwrap();
    let mut bin = std::fs::read(b).unwrap();
    edit(&mut param, &mut bin);
    let dir = tempdir();
    let (pp, bp) = (dir.join("m.param"), dir.join("m.bin"));
    std::fs::write(&pp, &param).unwrap();
    std::fs::write(&bp, &bin).unwrap();
    let e = Graph::load_ncnn(&pp, &bp)
        .expect_err("a broken model must not load")
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    e
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "refqsr-loader-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn truncated_bin_names_the_layer() {
    let e = broken(|_, bin| bin.truncate(bin.len() / 2));
    assert!(
        e.contains("m.bin") && e.contains("truncated") && e.contains("layer `/"),
        "{e}"
    );
}

#[test]
fn trailing_bytes_are_an_error() {
    let e = broken(|_, bin| bin.extend_from_slice(&[0; 64]));
    assert!(e.contains("64 bytes left over"), "{e}");
}

#[test]
fn wrong_counts_are_errors() {
    let e = broken(|p, _| *p = p.replacen("77 92", "78 92", 1));
    assert!(
        e.contains("m.param") && e.contains("declares 78 layers"),
        "{e}"
    );
    let e = broken(|p, _| *p = p.replacen("77 92", "77 93", 1));
    assert!(e.contains("declares 93 blobs"), "{e}");
    let e = broken(|p, _| *p = p.replacen("6=20736", "6=20737", 1));
    assert!(
        e.contains("weight_data_size 20737") && e.contains("line "),
        "{e}"
    );
    let e =
        broken(|p, _| *p = p.replacen("0=48 1=3 4=1 5=1 6=20736", "0=47 1=3 4=1 5=1 6=20736", 1));
    assert!(e.contains("does not match"), "{e}");
}

#[test]
fn unknown_layer_is_named() {
    let e = broken(|p, _| *p = p.replacen("Swish ", "Mish  ", 1));
    assert!(
        e.contains("unsupported layer type `Mish`") && e.contains("line 10"),
        "{e}"
    );
}

#[test]
fn garbage_and_non_utf8_are_errors() {
    let e = broken(|p, _| *p = "this is not a model".into());
    assert!(e.contains("magic"), "{e}");
    let (_, b) = model("spanx2_ch48");
    let dir = tempdir();
    let pp = dir.join("x.param");
    std::fs::write(&pp, [0x37, 0x37, 0xff, 0xfe, 0x00, 0x80]).unwrap();
    let e = Graph::load_ncnn(&pp, &b).unwrap_err().to_string();
    assert!(e.contains("x.param") && e.contains("UTF-8"), "{e}");
    let e = Graph::load_ncnn(&dir.join("missing.param"), Path::new(&b))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.param"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_parameters_are_errors() {
    let e =
        broken(|p, _| *p = p.replacen("0=48 1=3 4=1 5=1 6=1296", "0=48 1=3 3=2 4=1 5=1 6=1296", 1));
    assert!(e.contains("stride"), "{e}");
    let e = broken(|p, _| *p = p.replacen("4=1 5=1 6=1296", "4=1 5=1 6=abc", 1));
    assert!(e.contains("bad value"), "{e}");
    let e = broken(|p, _| *p = p.replacen("DepthToSpace 1 1", "DepthToSpace 1 1 nowhere", 1));
    assert!(e.contains("expected `key=value`, found `output`"), "{e}");
    let e = broken(|p, _| *p = p.replacen("output 0=2", "output 0=2 1=1", 1));
    assert!(e.contains("PixelShuffle mode 1"), "{e}");
    let e =
        broken(|p, _| *p = p.replacen("/Sub_output_0 /Mul_output_0", "output /Mul_output_0", 1));
    assert!(
        e.contains("`output` is not produced by any earlier layer"),
        "{e}"
    );
}
