//! CPU twin of `shaders/peak_dot.wgsl` (the adapter's packed int8 peak).

use crate::kernels::peak_dot::CHAINS;
use crate::quant::pack::dot4_i8;

/// The final word of every chain of `invocations` invocations after `iters` steps of
/// v = `dot4I8Packed`(v, `w`) + `c`, from `seeds` (`invocations` x [`CHAINS`] words). The
/// add wraps, as WGSL's i32 addition does.
pub fn peak_dot(seeds: &[u32], invocations: usize, iters: u32, w: u32, c: i32) -> Vec<u32> {
    seeds[..invocations * CHAINS as usize]
        .iter()
        .map(|&v0| (0..iters).fold(v0, |v, _| dot4_i8(v, w).wrapping_add(c) as u32))
        .collect()
}
