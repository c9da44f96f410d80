//! Launcher of `shaders/winograd_gemm.wgsl` (Winograd step 2: per-position products).

use super::Dispatch;
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    tiles: u32,
    icg: u32,
    ocg: u32,
    og: u32,
    pos0: u32,
    _pad: [u32; 3],
}

/// What one launch covers.
pub struct Shape {
    pub batch: u32,
    pub tiles: u32,
    pub icg: u32,
    pub ocg: u32,
    /// First output group of the block.
    pub og: u32,
    /// First position of the chunk and how many positions it has.
    pub pos0: u32,
    pub positions: u32,
}

/// Record the products of one block of output groups over one chunk of positions, whose
/// weights are `slice`.
pub fn dispatch(ctx: &Context, label: &str, pipeline: &std::sync::Arc<wgpu::ComputePipeline>, v: &wgpu::Buffer, slice: wgpu::BufferBinding<'_>, m: &wgpu::Buffer, s: Shape) -> Dispatch {
    let params = ctx.uniform(
        "winograd gemm params",
        &Params {
            tiles: s.tiles,
            icg: s.icg,
            ocg: s.ocg,
            og: s.og,
            pos0: s.pos0,
            _pad: [0; 3],
        },
    );
    let layout = pipeline.get_bind_group_layout(0);
    let entries = [
        wgpu::BindGroupEntry { binding: 0, resource: v.as_entire_binding() },
        wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::Buffer(slice) },
        wgpu::BindGroupEntry { binding: 2, resource: m.as_entire_binding() },
        wgpu::BindGroupEntry { binding: 3, resource: params.as_entire_binding() },
    ];
    let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &layout,
        entries: &entries,
    });
    Dispatch {
        label: format!("{label} (winograd gemm)"),
        bind_group,
        pipeline: pipeline.clone(),
        workgroups: [s.tiles.div_ceil(8).div_ceil(64), s.positions, s.batch],
    }
}
