//! Launcher of `shaders/conv_int8.wgsl`: a 3x3 integer convolution straight from the packed
//! input (no im2col gather), with the weights and corrections of a [`GpuGemmInt8`] built by
//! [`PackedGemmInt8::conv`](super::gemm_int8::PackedGemmInt8::conv). Also the dispatch code
//! of every row-tiled integer convolution ([`RowConv`]): `conv_int4` and `conv_int4_swar`
//! share this kernel's tiling, bindings and shape uniform.

use std::sync::Arc;

use super::gemm_int8::{GpuGemmInt8, PackedGemmInt8, OCB};
use super::int_store::Store;
use super::{bind_resources, pad_uniform, Dispatch, UniformSlices, PAD_WORDS};
use crate::error::Result;
use crate::gpu::Context;

/// Pixels of a row per invocation.
pub const PX: u32 = 8;

/// The `Shape` uniform of the row-tiled integer convolutions.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Shape {
    width: u32,
    height: u32,
    words: u32,
    ocg: u32,
    og: u32,
    row_tiles: u32,
    k: u32,
    _align: u32,
    pads: [[u32; 4]; PAD_WORDS / 4],
}

/// A row-tiled integer convolution's resources: its pipeline, one uniform weight slice per
/// block of [`OCB`] output groups (slice `b` for block `b`), and the corrections.
pub(crate) struct RowConv<'a> {
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub weights: &'a UniformSlices,
    pub corr: &'a wgpu::Buffer,
    pub ocg: usize,
    /// Packed input words per pixel.
    pub words: usize,
    pub k: u32,
    /// Names the kernel in dispatch labels.
    pub kind: &'static str,
}

impl RowConv<'_> {
    /// One dispatch per block over packed `a` (`batch x words x h x w`), reading `pad`
    /// outside the image, into `dst` as `store` says.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &self,
        ctx: &Context,
        label: &str,
        a: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        store: &Store<'_>,
        batch: u32,
        h: u32,
        w: u32,
        pads: &[u32],
    ) -> Vec<Dispatch> {
        let row_tiles = w.div_ceil(PX);
        let store_params = store.uniform(ctx, self.ocg as u32, h * w);
        let [vecs, residual] = store.inputs(ctx);
        (0..self.ocg.div_ceil(OCB))
            .map(|block| {
                let shape = ctx.uniform(
                    "row conv shape",
                    &Shape {
                        width: w,
                        height: h,
                        words: self.words as u32,
                        ocg: self.ocg as u32,
                        og: (block * OCB) as u32,
                        row_tiles,
                        k: self.k,
                        _align: 0,
                        pads: pad_uniform(pads),
                    },
                );
                let bind_group = bind_resources(
                    ctx,
                    label,
                    &self.pipeline,
                    vec![
                        a.as_entire_binding(),
                        self.weights.binding(block),
                        self.corr.as_entire_binding(),
                        vecs.as_entire_binding(),
                        residual.as_entire_binding(),
                        dst.as_entire_binding(),
                        shape.as_entire_binding(),
                        store_params.as_entire_binding(),
                    ],
                );
                Dispatch {
                    label: format!("{label} ({})", self.kind),
                    bind_group,
                    pipeline: self.pipeline.clone(),
                    workgroups: [(h * row_tiles).div_ceil(64), 1, batch],
                }
            })
            .collect()
    }
}

/// Whether `p` (a K x K product over `tap * icg + ic` input words) can run as `conv_int8`:
/// a 3x3 convolution whose whole block of weights fits one uniform slice.
pub fn applies(p: &PackedGemmInt8, k: usize) -> bool {
    k == 3 && p.positions == 1 && p.icg % 9 == 0 && p.slicing().chunks() == 1
}

/// Record the sums of `g` over packed `a` (`batch x icg x h x w` words), reading `pad`
/// outside the image, into `dst` as `store` says.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Context,
    label: &str,
    g: &GpuGemmInt8,
    a: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    store: &Store<'_>,
    batch: u32,
    h: u32,
    w: u32,
    pads: &[u32],
) -> Result<Vec<Dispatch>> {
    let p = &g.packed;
    assert!(applies(p, 3), "conv_int8 runs 3x3 products in one slice");
    let conv = RowConv {
        pipeline: ctx.pipeline("conv_int8", &[])?,
        weights: &g.weights,
        corr: &g.corr,
        ocg: p.ocg,
        words: p.icg / 9,
        k: 3,
        kind: "int8 conv",
    };
    Ok(conv.dispatch(ctx, label, a, dst, store, batch, h, w, pads))
}
