//! Launcher of `shaders/conv_int4.wgsl`: a 1x1 or 3x3 integer convolution on nibble-packed
//! activations (at most 4 bits), with the byte weights and corrections of a [`GpuGemmInt8`]
//! built by [`PackedGemmInt8::conv`] over input channels padded to a multiple of 8.

use super::conv_int8::RowConv;
use super::gemm_int8::{GpuGemmInt8, PackedGemmInt8};
use super::int_store::Store;
use super::Dispatch;
use crate::error::Result;
use crate::gpu::Context;

/// Whether `p` (a K x K product over `tap * icg + ic` input words) can run as `conv_int4`:
/// K of 1 or 3, an even number of input groups per tap (channels padded to 8), and the
/// whole block of weights in one uniform slice.
pub fn applies(p: &PackedGemmInt8, k: usize) -> bool {
    (k == 1 || k == 3) && p.positions == 1 && p.icg % (2 * k * k) == 0 && p.slicing().chunks() == 1
}

/// Record the sums of `g` over nibble-packed `a` (`batch x icw x h x w` words), reading `pad`
/// outside the image, into `dst` as `store` says.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    g: &GpuGemmInt8,
    a: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    store: &Store<'_>,
    batch: u32,
    h: u32,
    w: u32,
    k: u32,
    pads: &[u32],
) -> Result<Vec<Dispatch>> {
    let p = &g.packed;
    assert!(
        applies(p, k as usize),
        "conv_int4 runs 1x1 or 3x3 products in one slice"
    );
    let conv = RowConv {
        pipeline: ctx.pipeline("conv_int4", &[])?,
        weights: &g.weights,
        corr: &g.corr,
        ocg: p.ocg,
        words: p.icg / (2 * k * k) as usize,
        k,
        kind: "int4 conv",
    };
    Ok(conv.dispatch(ctx, label, a, dst, store, batch, h, w, pads))
}
