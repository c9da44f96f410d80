//! Launcher of `shaders/unary.wgsl`: a standalone activation.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;
use crate::model::Activation;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    plane: u32,
    groups: u32,
    channels: u32,
    leaky: f32,
    row: u32,
    _pad: [u32; 2],
}

/// Record `dst = act(src)`; `slopes` is the uploaded PReLU slope vector (if any).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    act: &Activation,
    src: &wgpu::Buffer,
    slopes: Option<&wgpu::Buffer>,
    dst: &wgpu::Buffer,
    batch: u32,
    channels: u32,
    plane: u32,
) -> Result<Dispatch> {
    let pipeline = ctx.pipeline("unary", &[("ACT", act.code() as u64)])?;
    let groups = channels.div_ceil(4);
    let len = batch * groups * plane;
    let (workgroups, row) = grid_1d(len, 256);
    let leaky = if let Activation::Leaky(s) = act {
        *s
    } else {
        0.0
    };
    let params = ctx.uniform(
        "unary params",
        &Params {
            len,
            plane,
            groups,
            channels,
            leaky,
            row,
            _pad: [0; 2],
        },
    );
    let slopes = slopes.unwrap_or(ctx.dummy());
    Ok(Dispatch {
        label: label.to_string(),
        bind_group: bind_group(ctx, label, &pipeline, &[src, slopes, dst, &params]),
        pipeline,
        workgroups,
    })
}
