//! The adapter-peak kernels (peak_fma, peak_dot) against their CPU twins on random seeds, bit
//! for bit (the fma chains multiply by powers of two, so fusing cannot change a rounding), and
//! the timed, cached peak of `refqsr::bench::peak`. Output buffers are poisoned first, so that
//! a chain the kernel skips cannot pass.

mod common;

use common::{ctx, Rng};
use refqsr::bench::peak;
use refqsr::gpu::Context;
use refqsr::kernels::{cpu, encode, peak_dot, peak_fma, Dispatch, Step};

/// Invocations per case: not a multiple of the 64-wide workgroup, so the bounds check runs.
const INVOCATIONS: usize = 1000;
/// Poison of output words: a NaN payload no chain produces from normal seeds, and a word the
/// dot chains reach with negligible probability.
const POISON: u32 = 0x7fc0_dead;

fn run(ctx: &Context, d: Dispatch) {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encode(&[Step::Launch(d)], &mut encoder);
    ctx.queue.submit([encoder.finish()]);
}

/// A pool buffer for `words` outputs, every word of it (the pool may round the size up) set
/// to [`POISON`].
fn poisoned(ctx: &Context, words: usize) -> wgpu::Buffer {
    let b = ctx.acquire(words as u64 * 4);
    let fill = vec![POISON; (b.size() / 4) as usize];
    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(&fill));
    b
}

fn read_words(ctx: &Context, b: &wgpu::Buffer, words: usize) -> Vec<u32> {
    bytemuck::cast_slice(&ctx.read(b, words as u64 * 4).unwrap()).to_vec()
}

#[test]
fn peak_fma_matches_its_twin_bit_for_bit() {
    let ctx = ctx();
    eprintln!("adapter: {}", ctx.describe());
    let mut rng = Rng::fresh("peak_fma");
    let words = INVOCATIONS * peak_fma::CHAINS as usize;
    // (a, iters): chains that settle at b / (1 - a), after few steps (not settled yet) and
    // many, a chain adding b (rounding at every step) and one flipping sign
    let cases = [
        (0.5, 5),
        (0.5, 64),
        (-0.5, 9),
        (0.25, 33),
        (1.0, 64),
        (-1.0, 17),
    ];
    for (a, iters) in cases {
        let b = rng.uniform(-4.0, 4.0);
        let seeds = rng.vec(words, -100.0, 100.0);
        let want = cpu::peak_fma(&seeds, INVOCATIONS, iters, a, b);
        let src = ctx.upload("seeds", &seeds);
        let dst = poisoned(&ctx, words);
        let d =
            peak_fma::dispatch(&ctx, "fma", &src, &dst, INVOCATIONS as u32, iters, a, b).unwrap();
        run(&ctx, d);
        let got = read_words(&ctx, &dst, words);
        ctx.release(dst);
        for (k, (&g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g,
                w.to_bits(),
                "a {a} b {b} iters {iters}: chain {k} is {} on the GPU, {w} on the CPU",
                f32::from_bits(g)
            );
        }
    }
}

#[test]
fn peak_dot_matches_its_twin_bit_for_bit() {
    let ctx = ctx();
    eprintln!("adapter: {}", ctx.describe());
    let mut rng = Rng::fresh("peak_dot");
    let words = INVOCATIONS * peak_dot::CHAINS as usize;
    for iters in [1, 7, 64] {
        let w = rng.next_u64() as u32;
        let c = rng.next_u64() as i32;
        let seeds: Vec<u32> = (0..words).map(|_| rng.next_u64() as u32).collect();
        let want = cpu::peak_dot(&seeds, INVOCATIONS, iters, w, c);
        let src = ctx.upload("seeds", &seeds);
        let dst = poisoned(&ctx, words);
        let d =
            peak_dot::dispatch(&ctx, "dot", &src, &dst, INVOCATIONS as u32, iters, w, c).unwrap();
        run(&ctx, d);
        let got = read_words(&ctx, &dst, words);
        ctx.release(dst);
        for (k, (g, t)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g, t,
                "w {w:#010x} c {c} iters {iters}: chain {k}: GPU {g:#010x}, CPU {t:#010x}"
            );
        }
    }
}

#[test]
fn the_peak_is_measured_once_and_then_cached() {
    let ctx = ctx();
    eprintln!("adapter: {}", ctx.describe());
    let dir = std::env::temp_dir().join(format!(
        "refqsr-peak-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // a corrupt cache is ignored and replaced, not an error
    std::fs::write(dir.join("peak.json"), "{ not json").unwrap();

    let t = std::time::Instant::now();
    let (first, cached) = peak::cached(&ctx, &dir).unwrap();
    let took = t.elapsed();
    eprintln!(
        "peak: {:.2} GFLOPS fp32, {:.2} GOPS int8 (measured in {:.2} s)",
        first.fp32_gflops,
        first.int8_gops,
        took.as_secs_f64()
    );
    assert!(!cached, "a corrupt cache must not be served");
    for (name, v) in [("fp32", first.fp32_gflops), ("int8", first.int8_gops)] {
        assert!(v.is_finite() && v > 0.0, "{name} peak {v}");
    }

    let (second, cached) = peak::cached(&ctx, &dir).unwrap();
    assert!(cached, "the second call must read the cache");
    assert_eq!(first, second);
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("peak.json")).unwrap()).unwrap();
    assert_eq!(table.as_object().map(|m| m.len()), Some(1), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}
