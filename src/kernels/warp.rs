//! Launcher of `shaders/warp.wgsl`: the last step of RefER (RefQSR Eqs. 6-7 at inference).
//! The matches of [`super::argmax`] become a per-cell flow (3 pixels per cell of offset),
//! interpolated bilinearly to full resolution; the reference features are sampled bilinearly
//! along it and subtracted from the query features. The result D = Fq - warp(Fr) is the
//! alignment error the refinement network consumes.

use super::refer_prep::pooled;
use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    total: u32,
    width: u32,
    height: u32,
    groups: u32,
    pw: u32,
    ph: u32,
    row: u32,
    _pad: u32,
}

/// Record D = `fq` - `fr` warped by the cell matches `idx` (`batch` x ph*pw u32) into `dst`;
/// `fq`, `fr` and `dst` hold `batch` windows of `channels` x `h` x `w` features (C4HW).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    fq: &wgpu::Buffer,
    fr: &wgpu::Buffer,
    idx: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    batch: u32,
    channels: u32,
    h: u32,
    w: u32,
) -> Result<Dispatch> {
    assert!(h > 0 && w > 0 && channels > 0, "empty window");
    let pipeline = ctx.pipeline("warp", &[])?;
    let (ph, pw) = pooled(h, w);
    let total = batch * h * w;
    let (workgroups, row) = grid_1d(total, 256);
    let params = ctx.uniform(
        "warp params",
        &Params {
            total,
            width: w,
            height: h,
            groups: channels.div_ceil(4),
            pw,
            ph,
            row,
            _pad: 0,
        },
    );
    Ok(Dispatch {
        label: format!("{label} (warp)"),
        bind_group: bind_group(ctx, label, &pipeline, &[fq, fr, idx, dst, &params]),
        pipeline,
        workgroups,
    })
}
