//! Launcher of `shaders/pixel_shuffle.wgsl`: depth to space.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    width: u32,
    height: u32,
    channels: u32,
    factor: u32,
    batch: u32,
    row: u32,
    _pad: [u32; 2],
}

/// Record a pixel shuffle of an `h` x `w` input into `channels` output channels.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    batch: u32,
    channels: u32,
    h: u32,
    w: u32,
    factor: u32,
) -> Result<Dispatch> {
    let pipeline = ctx.pipeline("pixel_shuffle", &[])?;
    let total = batch * channels.div_ceil(4) * h * w * factor * factor;
    let (workgroups, row) = grid_1d(total, 256);
    let params = ctx.uniform(
        "pixel shuffle params",
        &Params {
            width: w,
            height: h,
            channels,
            factor,
            batch,
            row,
            _pad: [0; 2],
        },
    );
    Ok(Dispatch {
        label: label.to_string(),
        bind_group: bind_group(ctx, label, &pipeline, &[src, dst, &params]),
        pipeline,
        workgroups,
    })
}
