//! Launcher of `shaders/quantize.wgsl`: Eq. 1 from f32 tensors to packed signed bytes.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;
use crate::quant::{ActQuant, MAX_ACT_CHANNELS};

/// `shaders/shared/common.wgsl`'s `Eq1`: an input quantizer as the kernels read it.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Eq1 {
    per_channel: u32,
    /// The carried values' range, `-2^(b-1)..=2^(b-1) - 1`: every channel's codes minus its
    /// zero point.
    lo: i32,
    hi: i32,
    // WGSL aligns the arrays to 16 bytes
    _align: u32,
    alpha: [[f32; 4]; MAX_ACT_CHANNELS / 4],
    beta: [[f32; 4]; MAX_ACT_CHANNELS / 4],
    inv_step: [[f32; 4]; MAX_ACT_CHANNELS / 4],
    zero: [[i32; 4]; MAX_ACT_CHANNELS / 4],
}

impl Eq1 {
    pub(crate) fn new(q: &ActQuant) -> Self {
        let mut e: Eq1 = bytemuck::Zeroable::zeroed();
        e.per_channel = q.is_per_channel() as u32;
        e.lo = -(1 << (q.bits - 1));
        e.hi = (1 << (q.bits - 1)) - 1;
        let n = q.channels().len();
        for c in 0..MAX_ACT_CHANNELS {
            // lanes past the channels only ever see 0.0, which any channel's bounds keep; they
            // repeat the last channel, as the CPU twins do
            let ch = q.channel(c.min(n - 1));
            let (g, l) = (c / 4, c % 4);
            e.alpha[g][l] = ch.alpha;
            e.beta[g][l] = ch.beta;
            e.inv_step[g][l] = ch.inv_step();
            e.zero[g][l] = ch.zero_point();
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
