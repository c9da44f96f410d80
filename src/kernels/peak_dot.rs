//! Launcher of `shaders/peak_dot.wgsl`: the adapter's packed int8 dot-product peak, timed by
//! [`crate::bench::peak`] so benchmarks can state how much of it the integer models reach.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

/// Independent chains per invocation (four vec4 in the shader).
pub const CHAINS: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    row: u32,
    w: u32,
    c: i32,
}

/// Record `iters` steps of v = `dot4I8Packed`(v, `w`) + `c` (wrapping, reinterpreted as the
/// next packed word) on each of the [`CHAINS`] chains of `invocations` invocations: `seeds`
/// holds the starting words, `out` receives the final ones (both `invocations` x [`CHAINS`]
/// u32).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    seeds: &wgpu::Buffer,
    out: &wgpu::Buffer,
    invocations: u32,
    iters: u32,
    w: u32,
    c: i32,
) -> Result<Dispatch> {
    let bytes = invocations as u64 * CHAINS as u64 * 4;
    assert!(
        invocations > 0 && seeds.size() >= bytes && out.size() >= bytes,
        "peak_dot of {invocations} invocations needs buffers of {bytes} bytes"
    );
    let pipeline = ctx.pipeline("peak_dot", &[("ITERS", iters as u64)])?;
    let (workgroups, row) = grid_1d(invocations, 64);
    let params = ctx.uniform(
        "peak_dot params",
        &Params {
            n: invocations,
            row,
            w,
            c,
        },
    );
    Ok(Dispatch {
        label: format!("{label} (peak_dot)"),
        bind_group: bind_group(ctx, label, &pipeline, &[seeds, out, &params]),
        pipeline,
        workgroups,
    })
}

/// Integer operations of one [`dispatch`]: a step counts as eight, the four 8-bit multiplies
/// and four adds (three inside the dot product, one of `c`), as int8 peaks are usually
/// counted (one multiply-accumulate = two operations).
pub fn ops(invocations: u32, iters: u32) -> f64 {
    8.0 * CHAINS as f64 * invocations as f64 * iters as f64
}
