//! Launcher of `shaders/quantize.wgsl`: Eq. 1 from f32 tensors to packed signed bytes.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;
use crate::quant::{ActQuant, MAX_ACT_CHANNELS};

/// `shaders/shared/common.wgsl`'s `Eq1`: an input quantizer as the kernels read it.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Eq1 {
    lo: i32,
    hi: i32,
    zero: i32,
    per_channel: u32,
    alpha: [[f32; 4]; MAX_ACT_CHANNELS / 4],
    beta: [[f32; 4]; MAX_ACT_CHANNELS / 4],
    inv_step: [[f32; 4]; MAX_ACT_CHANNELS / 4],
}

impl Eq1 {
    pub(crate) fn new(q: &ActQuant) -> Self {
        let mut e: Eq1 = bytemuck::Zeroable::zeroed();
        e.lo = q.lo();
        e.hi = q.lo() + (1 << q.bits) - 1;
        e.zero = q.zero_point();
        e.per_channel = q.is_per_channel() as u32;
        let n = q.channels().len();
        for c in 0..n.next_multiple_of(4) {
            // lanes past the channels only ever see 0.0, which any channel's bounds keep
            let ch = q.channel(c.min(n - 1));
            e.alpha[c / 4][c % 4] = ch.alpha;
            e.beta[c / 4][c % 4] = ch.beta;
            e.inv_step[c / 4][c % 4] = ch.inv_step();
        }
        e
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    plane: u32,
    groups: u32,
    channels: u32,
    row: u32,
    nibbles: u32,
    _pad: [u32; 2],
    q: Eq1,
}

/// Record the quantization of `batch` x `channels` x `plane` values of `src` into `dst`: four
/// bytes per word, or eight nibbles per word with `nibbles` (at most 4 bits).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    q: &ActQuant,
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
            row,
            nibbles: nibbles as u32,
            _pad: [0; 2],
            q: Eq1::new(q),
        },
    );
    Ok(Dispatch {
        label: format!("{label} (quantize)"),
        bind_group: bind_group(ctx, label, &pipeline, &[src, dst, &params]),
        pipeline,
        workgroups,
    })
}
