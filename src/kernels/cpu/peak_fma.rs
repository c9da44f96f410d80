//! CPU twin of `shaders/peak_fma.wgsl` (the adapter's fp32 peak).

use crate::kernels::peak_fma::CHAINS;

/// The final value of every chain of `invocations` invocations after `iters` steps of
/// x = x * `a` + `b`, from `seeds` (`invocations` x [`CHAINS`], an invocation's chains
/// together as in the shader). Written unfused: with `a` a power of two the product is exact,
/// so this equals the shader's result whether its driver fuses or not.
pub fn peak_fma(seeds: &[f32], invocations: usize, iters: u32, a: f32, b: f32) -> Vec<f32> {
    seeds[..invocations * CHAINS as usize]
        .iter()
        .map(|&x0| (0..iters).fold(x0, |x, _| x * a + b))
        .collect()
}
