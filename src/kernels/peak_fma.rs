//! Launcher of `shaders/peak_fma.wgsl`: the adapter's fp32 FMA peak, timed by
//! [`crate::bench::peak`] so benchmarks can state how much of it a model reaches.

use super::{bind_group, grid_1d, Dispatch};
use crate::error::Result;
use crate::gpu::Context;

/// Independent chains per invocation (eight vec4 in the shader, which says why so many).
pub const CHAINS: u32 = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    row: u32,
    a: f32,
    b: f32,
}

/// Record `iters` steps of x = fma(x, `a`, `b`) on each of the [`CHAINS`] chains of
/// `invocations` invocations: `seeds` holds the starting values, `out` receives the final ones
/// (both `invocations` x [`CHAINS`] f32). Choose `a` a power of two for a result the CPU twin
/// reproduces exactly.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    seeds: &wgpu::Buffer,
    out: &wgpu::Buffer,
    invocations: u32,
    iters: u32,
    a: f32,
    b: f32,
) -> Result<Dispatch> {
    let bytes = invocations as u64 * CHAINS as u64 * 4;
    assert!(
        invocations > 0 && seeds.size() >= bytes && out.size() >= bytes,
        "peak_fma of {invocations} invocations needs buffers of {bytes} bytes"
    );
    let pipeline = ctx.pipeline("peak_fma", &[("ITERS", iters as u64)])?;
    let (workgroups, row) = grid_1d(invocations, 64);
    let params = ctx.uniform(
        "peak_fma params",
        &Params {
            n: invocations,
            row,
            a,
            b,
        },
    );
    Ok(Dispatch {
        label: format!("{label} (peak_fma)"),
        bind_group: bind_group(ctx, label, &pipeline, &[seeds, out, &params]),
        pipeline,
        workgroups,
    })
}

/// Floating-point operations of one [`dispatch`]: an FMA counts as two (a multiply and an
/// add), as vendors count their peak; loop control and memory traffic are not counted.
pub fn ops(invocations: u32, iters: u32) -> f64 {
    2.0 * CHAINS as f64 * invocations as f64 * iters as f64
}
