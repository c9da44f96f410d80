//! Launcher of `shaders/winograd_input.wgsl` (Winograd step 1: V = B^T d B).

use super::{bind_group, Dispatch};
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    width: u32,
    height: u32,
    tiles_x: u32,
    tiles: u32,
    icg: u32,
    vgroups: u32,
    g0: u32,
    _pad: u32,
}

/// Where a transformed input goes in V: `vgroups` channel groups per position, this input's
/// from group `g0` on (a lone input: `vgroups` = its own groups, `g0` = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub vgroups: u32,
    pub g0: u32,
}

/// Record the input transform of `batch` images of `icg` groups, `h` x `w`, into `slot` of `v`.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    pipeline: &std::sync::Arc<wgpu::ComputePipeline>,
    src: &wgpu::Buffer,
    v: &wgpu::Buffer,
    slot: Slot,
    batch: u32,
    icg: u32,
    h: u32,
    w: u32,
    tiles_x: u32,
    tiles: u32,
) -> Dispatch {
    let params = ctx.uniform(
        "winograd input params",
        &Params {
            width: w,
            height: h,
            tiles_x,
            tiles,
            icg,
            vgroups: slot.vgroups,
            g0: slot.g0,
            _pad: 0,
        },
    );
    Dispatch {
        label: format!("{label} (winograd input)"),
        bind_group: bind_group(ctx, label, pipeline, &[src, v, &params]),
        pipeline: pipeline.clone(),
        workgroups: [tiles.div_ceil(64), icg, batch],
    }
}
