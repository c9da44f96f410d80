//! Launcher of `shaders/dequant.wgsl`: integer sums to floats with the convolution epilogue.

use super::conv::EpilogueParams;
use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    plane: u32,
    ocg: u32,
    oc: u32,
    act: u32,
    epi: u32,
    leaky: f32,
    row: u32,
}

/// Record `dst = epilogue(sums * scales)` for `batch` x `oc` channels x `plane` pixels;
/// `scales` and `vecs` are per-group buffers (see [`EpilogueParams::vecs`]).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    e: &EpilogueParams,
    sums: &wgpu::Buffer,
    scales: &wgpu::Buffer,
    vecs: &wgpu::Buffer,
    residual: Option<&wgpu::Buffer>,
    dst: &wgpu::Buffer,
    batch: u32,
    oc: u32,
    plane: u32,
) -> Result<Dispatch> {
    let pipeline = ctx.pipeline("dequant", &[])?;
    let ocg = oc.div_ceil(4);
    let len = batch * ocg * plane;
    let (workgroups, row) = grid_1d(len, 256);
    let params = ctx.uniform(
        "dequant params",
        &Params {
            len,
            plane,
            ocg,
            oc,
            act: e.act,
            epi: e.epi,
            leaky: e.leaky,
            row,
        },
    );
    let residual = residual.unwrap_or(ctx.dummy());
    Ok(Dispatch {
        label: format!("{label} (dequant)"),
        bind_group: bind_group(
            ctx,
            label,
            &pipeline,
            &[sums, scales, vecs, residual, dst, &params],
        ),
        pipeline,
        workgroups,
    })
}
