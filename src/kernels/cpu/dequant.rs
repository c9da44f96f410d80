//! CPU twin of `shaders/dequant.wgsl`.

use super::conv::finish;
use super::Tensor;
use crate::kernels::conv::EpilogueParams;

/// `epilogue(sums * scales)` over C4HW sums of `n` x `oc` x `h` x `w`; `scales` per channel.
#[allow(clippy::too_many_arguments)]
pub fn dequant(
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
