//! Launcher of `shaders/concat.wgsl`: channel concatenation of up to four tensors.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    c: [u32; 4],
    plane: u32,
    batch: u32,
    groups: u32,
    channels: u32,
    row: u32,
    _pad: [u32; 3],
}

/// Record the concatenation of `inputs` (buffer, channels) into `dst`.
pub fn dispatch(
    ctx: &Context,
    label: &str,
    inputs: &[(&wgpu::Buffer, u32)],
    dst: &wgpu::Buffer,
    batch: u32,
    plane: u32,
) -> Result<Dispatch> {
    assert!(!inputs.is_empty() && inputs.len() <= crate::model::MAX_CONCAT_INPUTS);
    let pipeline = ctx.pipeline("concat", &[])?;
    let mut c = [0u32; 4];
    let mut bufs: Vec<&wgpu::Buffer> = vec![ctx.dummy(); 4];
    for (i, (b, ch)) in inputs.iter().enumerate() {
        c[i] = *ch;
        bufs[i] = b;
    }
    let channels: u32 = c.iter().sum();
    let groups = channels.div_ceil(4);
    let (workgroups, row) = grid_1d(batch * groups * plane, 256);
    let params = ctx.uniform(
        "concat params",
        &Params {
            c,
            plane,
            batch,
            groups,
            channels,
            row,
            _pad: [0; 3],
        },
    );
    bufs.push(dst);
    bufs.push(&params);
    Ok(Dispatch {
        label: label.to_string(),
        bind_group: bind_group(ctx, label, &pipeline, &bufs),
        pipeline,
        workgroups,
    })
}
