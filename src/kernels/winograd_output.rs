//! Launcher of `shaders/winograd_output.wgsl` (Winograd step 3: Y = A^T M A + epilogue).

use super::winograd::PackedWinograd;
use super::{bind_group, Dispatch};
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    width: u32,
    height: u32,
    tiles_x: u32,
    tiles: u32,
    ocg: u32,
    oc: u32,
    act: u32,
    epi: u32,
    leaky: f32,
    _pad: [u32; 3],
}

/// Record the output transform and epilogue into `dst` (`batch` images of `h` x `w`).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    pipeline: &std::sync::Arc<wgpu::ComputePipeline>,
    m: &wgpu::Buffer,
    vecs: &wgpu::Buffer,
    residual: Option<&wgpu::Buffer>,
    dst: &wgpu::Buffer,
    p: &PackedWinograd,
    batch: u32,
    h: u32,
    w: u32,
    tiles_x: u32,
    tiles: u32,
) -> Dispatch {
    let e = &p.epilogue;
    let params = ctx.uniform(
        "winograd output params",
        &Params {
            width: w,
            height: h,
            tiles_x,
            tiles,
            ocg: p.ocg() as u32,
            oc: p.oc() as u32,
            act: e.act,
            epi: e.epi,
            leaky: e.leaky,
            _pad: [0; 3],
        },
    );
    let residual = residual.unwrap_or(ctx.dummy());
    Dispatch {
        label: format!("{label} (winograd output)"),
        bind_group: bind_group(ctx, label, pipeline, &[m, vecs, residual, dst, &params]),
        pipeline: pipeline.clone(),
        workgroups: [tiles.div_ceil(64), p.ocg() as u32, batch],
    }
}
