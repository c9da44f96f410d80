//! Launcher of `shaders/refer_prep.wgsl`: the first step of RefER (reference-based error
//! refinement, RefQSR Eq. 4 at inference). A feature window is pooled into 3 x 3 cells, each
//! cell the mean of its L2-normalized pixel features, quantized to signed codes so that the
//! matching of query cells against reference cells ([`super::cost_volume`], Eq. 5) is an
//! integer product. Run once on the query window and once on the reference window.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    total: u32,
    cells: u32,
    pw: u32,
    width: u32,
    height: u32,
    channels: u32,
    groups: u32,
    row: u32,
    inv_step: f32,
    qmax: f32,
    _pad: [u32; 2],
}

/// Pooled grid of an `h` x `w` window: (ph, pw) = (ceil(h / 3), ceil(w / 3)) cells; edge
/// cells hold what is left of the window.
pub fn pooled(h: u32, w: u32) -> (u32, u32) {
    (h.div_ceil(3), w.div_ceil(3))
}

/// Largest code of `bits`-bit symmetric quantization: 2^(bits - 1) - 1 (the code -2^(bits - 1)
/// is left out so that the grid is symmetric about 0).
pub fn qmax(bits: u32) -> i32 {
    assert!(
        (2..=8).contains(&bits),
        "{bits} bits: RefER codes have 2 to 8"
    );
    (1 << (bits - 1)) - 1
}

/// Reciprocal step of codes clipped at `clip`: computed once here, so that the shader and
/// the CPU twin multiply by the very same float.
pub fn inv_step(bits: u32, clip: f32) -> f32 {
    assert!(clip > 0.0, "clip {clip} must be positive");
    qmax(bits) as f32 / clip
}

/// Record the pooled, quantized descriptors of `batch` windows of `channels` x `h` x `w`
/// features (`src`, C4HW) into `dst`: `batch` x ph*pw x ceil(channels / 4) words.
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
    bits: u32,
    clip: f32,
) -> Result<Dispatch> {
    assert!(h > 0 && w > 0 && channels > 0, "empty window");
    let pipeline = ctx.pipeline("refer_prep", &[])?;
    let (ph, pw) = pooled(h, w);
    let total = batch * ph * pw;
    let (workgroups, row) = grid_1d(total, 64);
    let params = ctx.uniform(
        "refer_prep params",
        &Params {
            total,
            cells: ph * pw,
            pw,
            width: w,
            height: h,
            channels,
            groups: channels.div_ceil(4),
            row,
            inv_step: inv_step(bits, clip),
            qmax: qmax(bits) as f32,
            _pad: [0; 2],
        },
    );
    Ok(Dispatch {
        label: format!("{label} (refer_prep)"),
        bind_group: bind_group(ctx, label, &pipeline, &[src, dst, &params]),
        pipeline,
        workgroups,
    })
}
