//! Launcher of `shaders/binary.wgsl`: elementwise add/sub/mul/div with broadcasting.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;
use crate::model::{BinaryKind, Rhs};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    plane: u32,
    groups: u32,
    channels: u32,
    scalar: f32,
    row: u32,
    _pad: [u32; 2],
}

/// Record `dst = a (kind) rhs` over tensors of `channels` x `plane` pixels x `batch`.
/// `b` is the tensor operand (`Rhs::Tensor`) or the uploaded per-channel vector.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    kind: BinaryKind,
    rhs: &Rhs,
    a: &wgpu::Buffer,
    b: Option<&wgpu::Buffer>,
    dst: &wgpu::Buffer,
    batch: u32,
    channels: u32,
    plane: u32,
) -> Result<Dispatch> {
    let (mode, scalar) = match rhs {
        Rhs::Tensor => (0u64, 0.0),
        Rhs::Scalar(s) => (1, *s),
        Rhs::PerChannel(_) => (2, 0.0),
    };
    let pipeline = ctx.pipeline("binary", &[("OP", kind.code() as u64), ("MODE", mode)])?;
    let groups = channels.div_ceil(4);
    let len = batch * groups * plane;
    let (workgroups, row) = grid_1d(len, 256);
    let params = ctx.uniform(
        "binary params",
        &Params {
            len,
            plane,
            groups,
            channels,
            scalar,
            row,
            _pad: [0; 2],
        },
    );
    let b = b.unwrap_or(ctx.dummy());
    Ok(Dispatch {
        label: label.to_string(),
        bind_group: bind_group(ctx, label, &pipeline, &[a, b, dst, &params]),
        pipeline,
        workgroups,
    })
}

/// A per-channel operand as the shader reads it: groups of four, padding lanes 1.
pub fn per_channel_vec(v: &[f32]) -> Vec<f32> {
    (0..v.len().div_ceil(4))
        .flat_map(|g| super::cpu::per_channel_group(v, g))
        .collect()
}
