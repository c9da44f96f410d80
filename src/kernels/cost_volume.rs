//! Launcher of `shaders/cost_volume.wgsl`: RefER's cost volume (RefQSR Eq. 5 at inference),
//! the integer similarity of every query cell with every reference cell of a window, computed
//! on the codes of [`super::refer_prep`]. Its rows feed [`super::argmax`].

use super::{bind_group, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

/// Edge of the square tile of E one workgroup computes (as `TILE` in the shader).
const TILE: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    cells: u32,
    groups: u32,
    _pad: [u32; 2],
}

/// Record E = `q` . `r`^T per batch item: `q` and `r` hold `batch` x `cells` x `groups` code
/// words, `e` receives `batch` x `cells` x `cells` i32 (query-major).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    q: &wgpu::Buffer,
    r: &wgpu::Buffer,
    e: &wgpu::Buffer,
    batch: u32,
    cells: u32,
    groups: u32,
) -> Result<Dispatch> {
    let tiles = cells.div_ceil(TILE);
    let most = ctx.limits.max_compute_workgroups_per_dimension;
    assert!(
        tiles <= most && batch <= most,
        "cost volume of {batch} x {cells} cells exceeds the grid"
    );
    let pipeline = ctx.pipeline("cost_volume", &[])?;
    let params = ctx.uniform(
        "cost_volume params",
        &Params {
            cells,
            groups,
            _pad: [0; 2],
        },
    );
    Ok(Dispatch {
        label: format!("{label} (cost_volume)"),
        bind_group: bind_group(ctx, label, &pipeline, &[q, r, e, &params]),
        pipeline,
        workgroups: [tiles, tiles, batch],
    })
}
