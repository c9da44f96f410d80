//! The adapter's own peak: fp32 FMA and packed int8 dot throughput (in the spirit of vkpeak).
//! Benchmarks divide a model's operation count by its time and compare it with this, and the
//! figure is cached per adapter and driver so that only the first benchmark pays for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::kernels::{peak_dot, peak_fma, Dispatch};

/// Throughput of the two peak kernels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Peak {
    /// fp32 FMA throughput, an FMA counted as two operations ([`peak_fma::ops`]).
    pub fp32_gflops: f64,
    /// `dot4I8Packed` throughput, a dot product and add counted as eight ([`peak_dot::ops`]).
    pub int8_gops: f64,
}

/// Steps per invocation: long enough that a fast GPU's dispatch (at [`MOST_INVOCATIONS`])
/// lasts far longer than the gap between dispatches.
const ITERS: u32 = 4096;
/// Invocations of the first (warm-up) submission: one workgroup.
const FIRST_INVOCATIONS: u32 = 64;
/// Largest dispatch (8 MiB of seeds and as much output); more work is more dispatches.
const MOST_INVOCATIONS: u32 = 1 << 16;
/// A submission this long is timed precisely enough by the host clock (the growth aims 20%
/// past it, so timed submissions last about 150 ms), while the whole measurement stays near
/// a second: 2 kernels x 3 timed submissions, plus a few short rounds of growth.
const TARGET: Duration = Duration::from_millis(125);
/// Submissions timed at the final size (the best one counts).
const TIMED: usize = 3;
/// Growth rounds before giving up on reaching [`TARGET`] (a driver that skips the work).
const MOST_ROUNDS: usize = 24;

/// Run both peak kernels and return their throughput: each grows from one workgroup until a
/// submission takes [`TARGET`], then the best of [`TIMED`] submissions of that size counts.
/// Timed on the host around submit and wait, which the kernels' length makes negligible.
pub fn measure(ctx: &Context) -> Result<Peak> {
    let words = (MOST_INVOCATIONS * peak_fma::CHAINS.max(peak_dot::CHAINS)) as usize;
    // normal values near the chains' fixed point 2b, so that no step meets a subnormal (some
    // drivers take a slow path for them); the dot kernel takes the same bits as packed bytes
    let seeds: Vec<f32> = (0..words)
        .map(|i| 1.0 + (i % 1024) as f32 / 1024.0)
        .collect();
    let seeds = ctx.upload("peak seeds", &seeds);
    let out = ctx.acquire(words as u64 * 4);
    let fma = best_rate(ctx, peak_fma::ops, |n| {
        peak_fma::dispatch(ctx, "peak", &seeds, &out, n, ITERS, 0.5, 0.75)
    });
    // bytes of both signs and of either magnitude, and a `c` that changes all four bytes
    let dot = best_rate(ctx, peak_dot::ops, |n| {
        peak_dot::dispatch(
            ctx,
            "peak",
            &seeds,
            &out,
            n,
            ITERS,
            0x03fd_7f81,
            0x0101_0101,
        )
    });
    ctx.release(out);
    Ok(Peak {
        fp32_gflops: significant(fma? / 1e9),
        int8_gops: significant(dot? / 1e9),
    })
}

/// `v` (positive) to four significant digits: the timing is not better than a percent, and
/// the cache file stays readable.
fn significant(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return v;
    }
    let k = 3 - v.log10().floor() as i32;
    // scaled by an exact power of ten, so the result is the double nearest the decimal
    if k >= 0 {
        let s = 10f64.powi(k);
        (v * s).round() / s
    } else {
        let s = 10f64.powi(-k);
        (v / s).round() * s
    }
}

/// Highest operations per second of the kernel `launch` records for a given invocation count.
fn best_rate(
    ctx: &Context,
    ops: fn(u32, u32) -> f64,
    launch: impl Fn(u32) -> Result<Dispatch>,
) -> Result<f64> {
    // an untimed first submission absorbs first-use costs (lazy shader compilation, waking
    // the driver's threads)
    let mut d = launch(FIRST_INVOCATIONS)?;
    time(ctx, &d, 1)?;
    let (mut n, mut repeats) = (FIRST_INVOCATIONS, 1u32);
    let mut t = time(ctx, &d, repeats)?;
    for _ in 0..MOST_ROUNDS {
        if t >= TARGET {
            break;
        }
        // the time predicts the size that reaches the target (fixed costs only make the
        // prediction short, never long), with a margin so that noise rarely leaves it just
        // short, which costs another round
        let factor = (TARGET.as_secs_f64() / t.as_secs_f64().max(1e-6) * 1.2).clamp(1.25, 64.0);
        let work = (n as f64 * repeats as f64 * factor).min(u32::MAX as f64);
        repeats = (work / MOST_INVOCATIONS as f64).ceil() as u32;
        let grown = ((work / repeats as f64).ceil() as u32).next_multiple_of(64);
        if grown != n {
            n = grown;
            d = launch(n)?;
        }
        t = time(ctx, &d, repeats)?;
    }
    let mut best = t;
    for _ in 1..TIMED {
        best = best.min(time(ctx, &d, repeats)?);
    }
    Ok(ops(n, ITERS) * repeats as f64 / best.as_secs_f64())
}

/// Host time of one submission of `repeats` back-to-back launches of `d`, recorded
/// beforehand so that only the device's work is timed.
fn time(ctx: &Context, d: &Dispatch, repeats: u32) -> Result<Duration> {
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(&d.label),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(&d.label),
            timestamp_writes: None,
        });
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind_group, &[]);
        let [x, y, z] = d.workgroups;
        for _ in 0..repeats {
            pass.dispatch_workgroups(x, y, z);
        }
    }
    let commands = encoder.finish();
    let start = Instant::now();
    ctx.submit_and_wait(commands)?;
    Ok(start.elapsed())
}

/// What the cached peak depends on: the adapter, its driver and this crate's kernels.
fn key(ctx: &Context) -> String {
    let i = &ctx.info;
    format!(
        "{} | {:?} | {} | {} | refqsr {}",
        i.name,
        i.backend,
        i.driver,
        i.driver_info,
        env!("CARGO_PKG_VERSION")
    )
}

/// The peak for this adapter from the cache file `peak.json` in `dir` (a JSON object mapping
/// adapter keys to peaks), measuring and storing it when missing. A file that cannot be read
/// or parsed is treated as empty and rewritten. Returns the peak and whether it came from the
/// cache.
pub fn cached(ctx: &Context, dir: &Path) -> Result<(Peak, bool)> {
    let path = dir.join("peak.json");
    let key = key(ctx);
    let mut table: BTreeMap<String, Peak> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    if let Some(&peak) = table.get(&key) {
        return Ok((peak, true));
    }
    let peak = measure(ctx)?;
    table.insert(key.clone(), peak);
    let json = serde_json::to_vec_pretty(&table).expect("a map of numbers serializes");
    // A cache that cannot be written (a read-only home) only costs a measurement next time.
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = crate::imageio::atomic_write(&path, |w| {
            std::io::Write::write_all(w, &json).map_err(|e| Error::io(&path, e))
        });
    }
    // serde_json's default parser may miss a double by an ulp: return the value as the next
    // call will read it, so that every call agrees
    let stored: BTreeMap<String, Peak> =
        serde_json::from_slice(&json).expect("the JSON just written parses");
    Ok((stored[&key], false))
}

/// Where [`cached`] keeps its file by default: `$REFQSR_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/refqsr`, else `$HOME/.cache/refqsr`, else `refqsr` in the temporary
/// directory.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("REFQSR_CACHE_DIR") {
        return dir.into();
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("refqsr");
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".cache").join("refqsr");
    }
    std::env::temp_dir().join("refqsr")
}
