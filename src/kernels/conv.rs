//! Launcher of `shaders/conv.wgsl`: fp32 convolution with a fused epilogue.

use std::sync::Arc;

use super::{bind_resources, Dispatch, UniformSlices};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::model::{Activation, Conv};

/// How a convolution is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// 3x3 as Winograd F(4x4, 3x3): `winograd_input`, `gemm`, `winograd_output`.
    Winograd,
    /// 1x1 as a one-position `gemm`.
    Gemm,
    /// `conv.wgsl`, for what the others cannot hold (over 1024 input channels).
    Direct,
}

/// The algorithm the engine (and the CPU reference) uses for `c`.
pub fn algorithm(c: &Conv) -> Algorithm {
    let fits = c.in_ch.div_ceil(4) * OCB <= SLICE_MATS;
    match c.k {
        3 if fits => Algorithm::Winograd,
        1 if fits => Algorithm::Gemm,
        _ => Algorithm::Direct,
    }
}

/// Output groups per invocation and per dispatch (the shader's register tile).
pub const OCB: usize = 4;
/// Pixels per invocation (along a row).
pub const PX: usize = 8;
/// Matrices in one block's uniform weight slice (64 KiB).
pub const SLICE_MATS: usize = 1024;

/// Weights and epilogue vectors in the shader's layout (shared by the GPU launch and the CPU
/// twin, so both read exactly the same numbers).
#[derive(Debug, Clone)]
pub struct PackedConv {
    pub k: usize,
    pub icg: usize,
    /// Real output groups.
    pub ocg: usize,
    pub oc: usize,
    /// Per block of [`OCB`] output groups: `[icg][k*k][OCB]` column-major 4x4 matrices
    /// (column j = input channel 4i+j, row r = output channel 4g+r).
    pub mats: Vec<[f32; 16]>,
    pub epilogue: EpilogueParams,
}

/// What every convolution kernel does after accumulating: bias, activation, SPAN gate or
/// residual add (see `finish` in the shaders).
#[derive(Debug, Clone)]
pub struct EpilogueParams {
    pub bias: Vec<f32>,
    pub slopes: Vec<f32>,
    /// `model::Activation::code`
    pub act: u32,
    pub leaky: f32,
    /// `model::Epilogue::code`
    pub epi: u32,
}

impl EpilogueParams {
    pub fn new(c: &Conv) -> Self {
        let (leaky, slopes) = match &c.act {
            Activation::Leaky(s) => (*s, Vec::new()),
            Activation::PRelu(s) => (0.0, s.clone()),
            _ => (0.0, Vec::new()),
        };
        EpilogueParams {
            bias: c.bias.clone(),
            slopes,
            act: c.act.code(),
            leaky,
            epi: c.epilogue.code(),
        }
    }

    /// Bias groups then slope groups, `groups` (the real output groups) each.
    pub fn vecs(&self, groups: usize) -> Vec<f32> {
        let n = groups * 4;
        let mut v = vec![0f32; 2 * n];
        v[..self.bias.len()].copy_from_slice(&self.bias);
        v[n..n + self.slopes.len()].copy_from_slice(&self.slopes);
        v
    }
}

impl PackedConv {
    pub fn new(c: &Conv) -> Self {
        let (k, icg, ocg) = (c.k, c.in_ch.div_ceil(4), c.out_ch.div_ceil(4));
        let blocks = ocg.div_ceil(OCB);
        let taps = k * k;
        let mut mats = vec![[0f32; 16]; blocks * icg * taps * OCB];
        for o in 0..c.out_ch {
            let (g, b) = (o / 4, o / 4 / OCB);
            for i in 0..c.in_ch {
                for t in 0..taps {
                    let idx = b * icg * taps * OCB + ((i / 4) * taps + t) * OCB + g % OCB;
                    mats[idx][(i % 4) * 4 + o % 4] = c.weights[(o * c.in_ch + i) * taps + t];
                }
            }
        }
        PackedConv {
            k,
            icg,
            ocg,
            oc: c.out_ch,
            mats,
            epilogue: EpilogueParams::new(c),
        }
    }

    /// Blocks of [`OCB`] output groups (one dispatch each).
    pub fn blocks(&self) -> usize {
        self.ocg.div_ceil(OCB)
    }

    /// Matrices per block.
    pub fn block_len(&self) -> usize {
        self.icg * self.k * self.k * OCB
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    width: u32,
    height: u32,
    og: u32,
    leaky: f32,
    k: u32,
    icg: u32,
    ocg: u32,
    oc: u32,
    act: u32,
    epi: u32,
    _pad: [u32; 2],
}

/// A convolution's weights resident on the device.
pub struct GpuConv {
    pub packed: PackedConv,
    pipeline: Arc<wgpu::ComputePipeline>,
    /// One slice per block of output groups.
    weights: UniformSlices,
    vecs: wgpu::Buffer,
}

impl GpuConv {
    pub fn new(ctx: &Context, packed: PackedConv) -> Result<Self> {
        if packed.block_len() > SLICE_MATS {
            return Err(Error::Invalid(format!(
                "a {k}x{k} convolution with {} input channels needs {} KiB of weights per block; \
                 the fp32 kernel binds 64 KiB (at most {} input channels for 3x3)",
                packed.icg * 4,
                packed.block_len() * 64 / 1024,
                SLICE_MATS / (9 * OCB) * 4,
                k = packed.k
            )));
        }
        let pipeline = ctx.pipeline("conv", &[])?;
        let blocks: Vec<&[[f32; 16]]> = packed.mats.chunks(packed.block_len()).collect();
        let weights = UniformSlices::new(ctx, "conv weights", &blocks);
        let vecs = ctx.upload("conv bias", &packed.epilogue.vecs(packed.ocg));
        Ok(GpuConv {
            packed,
            pipeline,
            weights,
            vecs,
        })
    }

    /// Record the launches (one per block of output groups) over `batch` images of `h` x `w`.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &self,
        ctx: &Context,
        label: &str,
        src: &wgpu::Buffer,
        residual: Option<&wgpu::Buffer>,
        dst: &wgpu::Buffer,
        batch: u32,
        h: u32,
        w: u32,
    ) -> Vec<Dispatch> {
        let residual = residual.unwrap_or(ctx.dummy());
        (0..self.packed.blocks())
            .map(|b| {
                let params = ctx.uniform(
                    "conv params",
                    &Params {
                        width: w,
                        height: h,
                        og: (b * OCB) as u32,
                        leaky: self.packed.epilogue.leaky,
                        k: self.packed.k as u32,
                        icg: self.packed.icg as u32,
                        ocg: self.packed.ocg as u32,
                        oc: self.packed.oc as u32,
                        act: self.packed.epilogue.act,
                        epi: self.packed.epilogue.epi,
                        _pad: [0; 2],
                    },
                );
                let bind_group = bind_resources(
                    ctx,
                    label,
                    &self.pipeline,
                    vec![
                        src.as_entire_binding(),
                        self.weights.binding(b),
                        self.vecs.as_entire_binding(),
                        residual.as_entire_binding(),
                        dst.as_entire_binding(),
                        params.as_entire_binding(),
                    ],
                );
                Dispatch {
                    label: label.to_string(),
                    pipeline: self.pipeline.clone(),
                    bind_group,
                    workgroups: [w.div_ceil(PX as u32).div_ceil(8), h.div_ceil(8), batch],
                }
            })
            .collect()
    }
}
