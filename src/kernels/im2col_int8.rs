//! Launcher of `shaders/im2col_int8.wgsl`: K x K neighbourhoods of packed activations, the
//! input of an integer convolution computed by `gemm_int8`.

use super::{bind_group, pad_uniform, Dispatch, PAD_WORDS};
use crate::error::Result;
use crate::gpu::Context;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    width: u32,
    height: u32,
    icg: u32,
    k: u32,
    batch: u32,
    _align: [u32; 3],
    pads: [[u32; 4]; PAD_WORDS / 4],
}

/// Record the gather of `batch` images of `icg` packed groups, `h` x `w`; `pads` holds each
/// group's packed word of the real value 0.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    batch: u32,
    icg: u32,
    h: u32,
    w: u32,
    k: u32,
    pads: &[u32],
) -> Result<Dispatch> {
    let pipeline = ctx.pipeline("im2col_int8", &[])?;
    let params = ctx.uniform(
        "im2col params",
        &Params {
            width: w,
            height: h,
            icg,
            k,
            batch,
            _align: [0; 3],
            pads: pad_uniform(pads),
        },
    );
    Ok(Dispatch {
        label: format!("{label} (im2col)"),
        bind_group: bind_group(ctx, label, &pipeline, &[src, dst, &params]),
        pipeline,
        workgroups: [(w * h).div_ceil(64), icg, batch],
    })
}
