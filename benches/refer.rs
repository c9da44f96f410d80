//! Criterion benches of RefER's four kernels (RefQSR Eqs. 4-7 at inference), one by one, on
//! the shapes RefQSR runs them: SPAN's tap (48 channels) on a patch window of 54 x 54 (the
//! 48-pixel patch and a 3-pixel halo each side), 16 windows per dispatch (`MAX_GROUP`), codes
//! at the low bits of `refqsr:8-4` (4). Per batch: 18 x 18 = 324 cells, a 324 x 324 cost
//! volume of 48-channel dot products.
//! - `refer_prep`: pool + normalize + quantize one window set (run twice per alignment, query
//!   and reference); throughput in feature elements read.
//! - `cost_volume`: E = q . r^T; throughput in multiply-accumulates (cells x cells x channels
//!   per window).
//! - `argmax`: the best reference cell per query cell; throughput in scores scanned.
//! - `warp`: D = Fq - warp(Fr); throughput in feature elements written.
//! - `chain`: the five launches of one alignment (exec.rs `Op::RefEr`) in one submission.
//!
//! The argmax and warp inputs are what the kernels before them produce on the same data.
//! `REFQSR_BENCH_QUICK=1` shrinks the batch to 2 windows so CI can run it in seconds;
//! `REFQSR_ADAPTER` picks the adapter. Each iteration submits the launch and waits for the
//! device before the clock stops.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use refqsr::gpu::Context;
use refqsr::kernels::{argmax, cost_volume, encode, refer_prep, warp, Dispatch, Step};
use refqsr::refqsr::{fit, HALO, MAX_GROUP, PATCH};

/// Record `steps`, submit them and wait for the device, so the clock stops after the work.
fn submit_and_wait(ctx: &Context, steps: &[Step]) {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encode(steps, &mut encoder);
    ctx.submit_and_wait(encoder.finish()).unwrap();
}

fn steps(launches: Vec<Dispatch>) -> Vec<Step> {
    launches.into_iter().map(Step::Launch).collect()
}

/// Deterministic features in [-1, 1), C4HW: `n` floats from `seed`.
fn features(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let ctx = Context::new(std::env::var("REFQSR_ADAPTER").ok().as_deref()).expect("a GPU adapter");
    eprintln!("benchmarking on {}", ctx.describe());
    let batch = if std::env::var_os("REFQSR_BENCH_QUICK").is_some() {
        2
    } else {
        MAX_GROUP
    };
    let (channels, side) = (48usize, PATCH + 2 * HALO);
    let bits = 4; // the low bits of refqsr:8-4, RefER's codes
    let clip = fit::clip(bits, channels);
    let (ph, pw) = refer_prep::pooled(side as u32, side as u32);
    let cells = (ph * pw) as usize;
    let groups = channels.div_ceil(4);

    // the buffers of one alignment, as exec.rs sizes them
    let feats = batch * groups * 4 * side * side;
    let fq = ctx.upload("fq", &features(feats, 1));
    let fr = ctx.upload("fr", &features(feats, 2));
    let codes = (batch * cells * groups) as u64 * 4;
    let (codes_q, codes_r) = (ctx.acquire(codes), ctx.acquire(codes));
    let cost = ctx.acquire((batch * cells * cells) as u64 * 4);
    let best = ctx.acquire((batch * cells) as u64 * 4);
    let dst = ctx.acquire(feats as u64 * 4);

    let (b, ch, h, w) = (batch as u32, channels as u32, side as u32, side as u32);
    let prep = |src: &wgpu::Buffer, out: &wgpu::Buffer| {
        refer_prep::dispatch(&ctx, "bench", src, out, b, ch, h, w, bits, clip).unwrap()
    };
    let cost_launch = || {
        cost_volume::dispatch(
            &ctx,
            "bench",
            &codes_q,
            &codes_r,
            &cost,
            b,
            cells as u32,
            groups as u32,
        )
        .unwrap()
    };
    let argmax_launch = || argmax::dispatch(&ctx, "bench", &cost, &best, b, cells as u32).unwrap();
    let warp_launch = || warp::dispatch(&ctx, "bench", &fq, &fr, &best, &dst, b, ch, h, w).unwrap();
    let chain = steps(vec![
        prep(&fq, &codes_q),
        prep(&fr, &codes_r),
        cost_launch(),
        argmax_launch(),
        warp_launch(),
    ]);
    // pipelines warm, and every intermediate holds what the kernels make of the features
    submit_and_wait(&ctx, &chain);

    let shape = format!("n{batch}_c{channels}_{side}x{side}");
    let per_window = (channels * side * side) as u64;
    let cases = [
        ("refer_prep", steps(vec![prep(&fq, &codes_q)]), per_window),
        (
            "cost_volume",
            steps(vec![cost_launch()]),
            (cells * cells * channels) as u64,
        ),
        (
            "argmax",
            steps(vec![argmax_launch()]),
            (cells * cells) as u64,
        ),
        ("warp", steps(vec![warp_launch()]), per_window),
    ];
    let mut group = c.benchmark_group("refer");
    group.sample_size(10);
    // the cost volume and the chain take ~0.1 s a run on lavapipe: the same iterations in
    // every sample, so 10 samples fit criterion's 5 s
    group.sampling_mode(SamplingMode::Flat);
    for (name, launch, per_batch_item) in &cases {
        submit_and_wait(&ctx, launch);
        group.throughput(Throughput::Elements(per_batch_item * batch as u64));
        group.bench_function(format!("{name}_{shape}"), |bn| {
            bn.iter(|| submit_and_wait(&ctx, launch))
        });
    }
    // the whole alignment (two preps, cost volume, argmax, warp): per window
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(format!("chain_{shape}"), |bn| {
        bn.iter(|| submit_and_wait(&ctx, &chain))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
