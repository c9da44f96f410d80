//! GPU faults injected on a healthy device (`REFQSR_FAULT`, see `refqsr::gpu::Fault`): a
//! failed allocation retries with smaller tiles, down to a floor; a lost device and a failed
//! integer self-check give a clear error or a fallback; no failed run writes an output. And
//! the device memory a job holds comes back: plans return their buffers to the pool, and the
//! pool trims itself to the budget between images.

mod common;

use std::path::Path;

use common::{asset, ctx, run_refqsr, save_crop, tempdir};
use refqsr::upscaler::load_graph;
use refqsr::{Options, Upscaler};

fn photo(dst: &Path, w: u32, h: u32) {
    save_crop("images/coffee.png", (100, 80, w, h), dst);
}

fn rgb(p: &Path) -> Vec<f32> {
    image::open(p).unwrap().to_rgb32f().into_raw()
}

#[test]
fn out_of_memory_retries_with_smaller_tiles() {
    let d = tempdir("oom");
    photo(&d.join("in.png"), 300, 200);
    // every tensor over 8 MB "does not fit": the first tiles fail, smaller ones succeed
    let (out, err) = run_refqsr(
        &d,
        "oom-above:8000000",
        &["-i", "in.png", "-o", "oom.png", "-s", "2"],
    );
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("out of device memory") && err.contains("retrying with"),
        "{err}"
    );
    assert!(
        !err.contains("Error"),
        "a recovered run reports no error: {err}"
    );
    // the picture is exactly that of a healthy run with the tile size the retries ended at
    let tile = err
        .rsplit("retrying with ")
        .next()
        .and_then(|r| r.split('-').next())
        .unwrap()
        .to_string();
    let (out, err) = run_refqsr(
        &d,
        "",
        &["-i", "in.png", "-o", "plain.png", "-s", "2", "-t", &tile],
    );
    assert!(out.status.success(), "{err}");
    assert!(
        rgb(&d.join("plain.png")) == rgb(&d.join("oom.png")),
        "retried output differs from a {tile}-pixel-tile run"
    );
    // below the floor: a clear error, a non-zero exit, no file
    let (out, err) = run_refqsr(
        &d,
        "oom-above:1000",
        &["-i", "in.png", "-o", "never.png", "-s", "2"],
    );
    assert!(!out.status.success());
    assert!(
        err.contains("Error: out of memory") && err.contains("smallest tiles"),
        "{err}"
    );
    assert!(!d.join("never.png").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn lost_device_is_an_error_and_writes_nothing() {
    let d = tempdir("lost");
    photo(&d.join("in.png"), 16, 12);
    for args in [
        vec!["-i", "in.png", "-o", "out.png", "-s", "2"],
        vec!["upscale", "in.png", "-o", "out.png", "-s", "2"],
    ] {
        let (out, err) = run_refqsr(&d, "lose-device", &args);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("device was lost"), "{err}");
        assert!(!d.join("out.png").exists(), "{args:?} wrote an output");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn failed_self_check_falls_back_to_fp32() {
    let d = tempdir("selfcheck");
    photo(&d.join("in.png"), 16, 12);
    let (out, err) = run_refqsr(&d, "", &["-i", "in.png", "-o", "fp32.png", "-s", "2"]);
    assert!(out.status.success(), "{err}");
    let (out, err) = run_refqsr(
        &d,
        "self-check",
        &[
            "-i",
            "in.png",
            "-o",
            "fallback.png",
            "-s",
            "2",
            "--mode",
            "w8a8",
        ],
    );
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("self-check failed") && err.contains("runs as fp32"),
        "{err}"
    );
    assert_eq!(rgb(&d.join("fp32.png")), rgb(&d.join("fallback.png")));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn self_check_passes_on_this_device() {
    // conv_int8, conv_int4, gemm_int8 and the requantizing store against their twins
    refqsr::kernels::int_conv::self_check(&ctx()).unwrap();
}

#[test]
fn plans_give_their_buffers_back_and_the_pool_trims() {
    // a device of its own: other tests share `ctx()` and its pool
    let ctx = refqsr::gpu::Context::new(std::env::var("REFQSR_ADAPTER").ok().as_deref()).unwrap();
    let before = ctx.live_tensor_memory();
    let budget = 64u64 << 20;
    {
        let graph = load_graph(None, Some(2)).unwrap();
        let up = Upscaler::with_graph(
            ctx.clone(),
            graph,
            &Options {
                max_memory: Some(budget),
                ..Options::default()
            },
        )
        .unwrap();
        // images of several sizes, as a folder of mixed photos
        for (w, h) in [(40, 30), (64, 17), (23, 51)] {
            let img = image::open(asset("images/chelsea.png"))
                .unwrap()
                .crop_imm(10, 10, w, h)
                .to_rgb32f();
            up.upscale_rgb(&img, &mut |_, _| {}).unwrap();
            let held = ctx.live_tensor_memory() + ctx.pooled_memory();
            assert!(
                held <= budget.max(ctx.live_tensor_memory()),
                "{w}x{h}: {} MiB held against a {} MiB budget",
                held >> 20,
                budget >> 20
            );
        }
    }
    assert_eq!(
        ctx.live_tensor_memory(),
        before,
        "every buffer of the dropped upscaler's plans is back in the pool"
    );
}
