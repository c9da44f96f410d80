//! Launcher of `shaders/argmax.wgsl`: RefER's matching step (RefQSR Eqs. 6-7 at inference,
//! the hard argmax in place of training's soft-argmax). For each query cell, the index of the
//! reference cell with the highest [`super::cost_volume`] score, the smallest index on ties;
//! [`super::warp`] turns these indices into a flow.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cells: u32,
    row: u32,
    _pad: u32,
}

/// Record idx `[n][i]` = argmax over j of `e[n][i][j]` for `batch` x `cells` rows of `cells`
/// i32 (`idx`: `batch` x `cells` u32).
pub fn dispatch(
    ctx: &Context,
    label: &str,
    e: &wgpu::Buffer,
    idx: &wgpu::Buffer,
    batch: u32,
    cells: u32,
) -> Result<Dispatch> {
    assert!(cells > 0, "argmax of empty rows");
    let pipeline = ctx.pipeline("argmax", &[])?;
    let rows = batch * cells;
    // one workgroup per row
    let (workgroups, row) = grid_1d(rows, 1);
    let params = ctx.uniform(
        "argmax params",
        &Params {
            rows,
            cells,
            row,
            _pad: 0,
        },
    );
    Ok(Dispatch {
        label: format!("{label} (argmax)"),
        bind_group: bind_group(ctx, label, &pipeline, &[e, idx, &params]),
        pipeline,
        workgroups,
    })
}
