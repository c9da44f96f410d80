//! Launcher of `shaders/quantize.wgsl`: Eq. 1 from f32 tensors to packed signed bytes.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;
use crate::quant::Quantizer;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    plane: u32,
    groups: u32,
    channels: u32,
    alpha: f32,
    beta: f32,
    inv_step: f32,
    lo: i32,
    hi: i32,
    zero: i32,
    row: u32,
    nibbles: u32,
}

/// Record the quantization of `batch` x `channels` x `plane` values of `src` into `dst`: four
/// bytes per word, or eight nibbles per word with `nibbles` (at most 4 bits).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    q: &Quantizer,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    batch: u32,
    channels: u32,
    plane: u32,
    nibbles: bool,
) -> Result<Dispatch> {
    assert!(
        !nibbles || q.bits <= 4,
        "{} bits do not fit a nibble",
        q.bits
    );
    let pipeline = ctx.pipeline("quantize", &[])?;
    let groups = channels.div_ceil(4);
    let words = if nibbles { groups.div_ceil(2) } else { groups };
    let len = batch * words * plane;
    let (workgroups, row) = grid_1d(len, 256);
    let params = ctx.uniform(
        "quantize params",
        &Params {
            len,
            plane,
            groups,
            channels,
            alpha: q.alpha,
            beta: q.beta,
            inv_step: q.inv_step(),
            lo: q.lo(),
            hi: q.lo() + (1 << q.bits) - 1,
            zero: q.zero_point(),
            row,
            nibbles: nibbles as u32,
        },
    );
    Ok(Dispatch {
        label: format!("{label} (quantize)"),
        bind_group: bind_group(ctx, label, &pipeline, &[src, dst, &params]),
        pipeline,
        workgroups,
    })
}
