//! Launcher of `shaders/conv_int4.wgsl`: a 1x1 or 3x3 integer convolution on nibble-packed
//! activations (at most 4 bits), with the byte weights and corrections of a [`GpuGemmInt8`]
//! built by [`PackedGemmInt8::conv`] over input channels padded to a multiple of 8.

use super::gemm_int8::{GpuGemmInt8, PackedGemmInt8, OCB};
use super::int_store::Store;
use super::{bind_resources, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

/// Pixels of a row per invocation.
pub const PX: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    width: u32,
    height: u32,
    icw: u32,
    ocg: u32,
    og: u32,
    pad: u32,
    row_tiles: u32,
    k: u32,
}

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
    pad: u32,
) -> Result<Vec<Dispatch>> {
    let p = &g.packed;
    assert!(
        applies(p, k as usize),
        "conv_int4 runs 1x1 or 3x3 products in one slice"
    );
    let pipeline = ctx.pipeline("conv_int4", &[])?;
    let row_tiles = w.div_ceil(PX);
    let store_params = store.uniform(ctx, p.ocg as u32, h * w);
    let [vecs, residual] = store.inputs(ctx);
    Ok(p.slicing()
        .slots()
        .map(|slot| {
            let params = ctx.uniform(
                "conv_int8 params",
                &Params {
                    width: w,
                    height: h,
                    icw: (p.icg / (2 * k * k) as usize) as u32,
                    ocg: p.ocg as u32,
                    og: (slot.block * OCB) as u32,
                    pad,
                    row_tiles,
                    k,
                },
            );
            let bind_group = bind_resources(
                ctx,
                label,
                &pipeline,
                vec![
                    a.as_entire_binding(),
                    g.weights.binding(slot.index),
                    g.corr.as_entire_binding(),
                    vecs.as_entire_binding(),
                    residual.as_entire_binding(),
                    dst.as_entire_binding(),
                    params.as_entire_binding(),
                    store_params.as_entire_binding(),
                ],
            );
            Dispatch {
                label: format!("{label} (int4 conv)"),
                bind_group,
                pipeline: pipeline.clone(),
                workgroups: [(h * row_tiles).div_ceil(64), 1, batch],
            }
        })
        .collect())
}
