//! Launcher of `shaders/conv_int8.wgsl`: a 3x3 integer convolution straight from the packed
//! input (no im2col gather), with the weights and corrections of a [`GpuGemmInt8`] built by
//! [`PackedGemmInt8::conv`](super::gemm_int8::PackedGemmInt8::conv).

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
    icg: u32,
    ocg: u32,
    og: u32,
    pad: u32,
    row_tiles: u32,
    _p: u32,
}

/// Whether `p` (a K x K product over `tap * icg + ic` input words) can run as `conv_int8`:
/// a 3x3 convolution whose whole block of weights fits one uniform slice.
pub fn applies(p: &PackedGemmInt8, k: usize) -> bool {
    k == 3 && p.positions == 1 && p.icg % 9 == 0 && p.slicing().chunks() == 1
}

/// Record the sums of `g` over packed `a` (`batch x icg x h x w` words), reading `pad`
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
    pad: u32,
) -> Result<Vec<Dispatch>> {
    let p = &g.packed;
    assert!(applies(p, 3), "conv_int8 runs 3x3 products in one slice");
    let pipeline = ctx.pipeline("conv_int8", &[])?;
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
                    icg: (p.icg / 9) as u32,
                    ocg: p.ocg as u32,
                    og: (slot.block * OCB) as u32,
                    pad,
                    row_tiles,
                    _p: 0,
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
                label: format!("{label} (int8 conv)"),
                bind_group,
                pipeline: pipeline.clone(),
                workgroups: [(h * row_tiles).div_ceil(64), 1, batch],
            }
        })
        .collect())
}
