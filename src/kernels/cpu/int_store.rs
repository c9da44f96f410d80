//! CPU twin of `shaders/shared/int_store.wgsl`, the integer kernels' epilogue.

use super::conv::finish;
use super::{quantize, Tensor};
use crate::kernels::conv::EpilogueParams;
use crate::quant::ActQuant;

/// What the kernel writes (see [`crate::kernels::int_store::Store`]).
#[derive(Clone, Copy)]
pub enum Store<'a> {
    Sums,
    Float {
        epilogue: &'a EpilogueParams,
        scales: &'a [f32],
        residual: Option<&'a Tensor>,
    },
    Packed {
        epilogue: &'a EpilogueParams,
        scales: &'a [f32],
        residual: Option<&'a Tensor>,
        next: &'a ActQuant,
        nibbles: bool,
    },
}

/// The words a kernel writes for C4HW `sums` of `n` x `oc` x `h` x `w` (`oc` rounds up to
/// whole groups for raw sums).
pub fn int_store(
    sums: &[[i32; 4]],
    store: Store<'_>,
    n: usize,
    oc: usize,
    h: usize,
    w: usize,
) -> Vec<u32> {
    match store {
        Store::Sums => sums.iter().flatten().map(|&v| v as u32).collect(),
        Store::Float {
            epilogue,
            scales,
            residual,
        } => dequant(sums, scales, epilogue, n, oc, h, w, residual)
            .data
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        Store::Packed {
            epilogue,
            scales,
            residual,
            next,
            nibbles,
        } => quantize(
            &dequant(sums, scales, epilogue, n, oc, h, w, residual),
            next,
            nibbles,
        ),
    }
}

/// `epilogue(sums * scales)`: the float result of the integer layer.
#[allow(clippy::too_many_arguments)]
fn dequant(
    sums: &[[i32; 4]],
    scales: &[f32],
    e: &EpilogueParams,
    n: usize,
    oc: usize,
    h: usize,
    w: usize,
    residual: Option<&Tensor>,
) -> Tensor {
    let mut out = Tensor::poisoned(n, oc, h, w);
    let (plane, ocg) = (h * w, oc.div_ceil(4));
    for (i, s) in sums.iter().enumerate() {
        let g = (i / plane) % ocg;
        let x: [f32; 4] =
            std::array::from_fn(|l| s[l] as f32 * scales.get(4 * g + l).copied().unwrap_or(0.0));
        out.set_vec4(i, finish(e, oc, x, g, residual.map(|r| r.vec4(i))));
    }
    out
}
