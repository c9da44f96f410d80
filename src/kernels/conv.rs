//! Launcher of `shaders/conv.wgsl`: fp32 convolution with a fused epilogue.

use std::sync::Arc;

use super::{bind_group, Dispatch};
use crate::error::Result;
use crate::gpu::Context;
use crate::model::{Activation, Conv};

/// Weights and epilogue vectors in the shader's layout (shared by the GPU launch and the CPU
/// twin, so both read exactly the same numbers).
#[derive(Debug, Clone)]
pub struct PackedConv {
    pub k: usize,
    pub icg: usize,
    /// Real output groups.
    pub ocg: usize,
    pub oc: usize,
    /// `[ocg padded to even][icg][k*k]` column-major 4x4 matrices.
    pub mats: Vec<[f32; 16]>,
    pub bias: Vec<f32>,
    pub slopes: Vec<f32>,
    pub act: u32,
    pub leaky: f32,
    pub epi: u32,
}

impl PackedConv {
    pub fn new(c: &Conv) -> Self {
        let (k, icg, ocg) = (c.k, c.in_ch.div_ceil(4), c.out_ch.div_ceil(4));
        let ocgp = ocg.next_multiple_of(2);
        let taps = k * k;
        let mut mats = vec![[0f32; 16]; ocgp * icg * taps];
        for o in 0..c.out_ch {
            for i in 0..c.in_ch {
                for t in 0..taps {
                    let m = &mut mats[((o / 4) * icg + i / 4) * taps + t];
                    m[(i % 4) * 4 + o % 4] = c.weights[(o * c.in_ch + i) * taps + t];
                }
            }
        }
        let (leaky, slopes) = match &c.act {
            Activation::Leaky(s) => (*s, Vec::new()),
            Activation::PRelu(s) => (0.0, s.clone()),
            _ => (0.0, Vec::new()),
        };
        PackedConv {
            k,
            icg,
            ocg,
            oc: c.out_ch,
            mats,
            bias: c.bias.clone(),
            slopes,
            act: c.act.code(),
            leaky,
            epi: c.epilogue.code(),
        }
    }

    /// Bias groups then slope groups, each padded to an even number of groups.
    pub fn vecs(&self) -> Vec<f32> {
        let n = self.ocg.next_multiple_of(2) * 4;
        let mut v = vec![0f32; 2 * n];
        v[..self.bias.len()].copy_from_slice(&self.bias);
        v[n..n + self.slopes.len()].copy_from_slice(&self.slopes);
        v
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    width: u32,
    height: u32,
    batch: u32,
    leaky: f32,
}

/// A convolution's weights resident on the device.
pub struct GpuConv {
    pub packed: PackedConv,
    pipeline: Arc<wgpu::ComputePipeline>,
    weights: wgpu::Buffer,
    vecs: wgpu::Buffer,
}

impl GpuConv {
    pub fn new(ctx: &Context, packed: PackedConv) -> Result<Self> {
        let pipeline = ctx.pipeline(
            "conv",
            &[
                ("K", packed.k as u64),
                ("ICG", packed.icg as u64),
                ("OCG", packed.ocg as u64),
                ("OC", packed.oc as u64),
                ("ACT", packed.act as u64),
                ("EPI", packed.epi as u64),
            ],
        )?;
        let weights = ctx.upload("conv weights", &packed.mats);
        let vecs = ctx.upload("conv bias", &packed.vecs());
        Ok(GpuConv {
            packed,
            pipeline,
            weights,
            vecs,
        })
    }

    /// Record a launch over `batch` images of `h` x `w`.
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
    ) -> Dispatch {
        let params = ctx.uniform(
            "conv params",
            &Params {
                width: w,
                height: h,
                batch,
                leaky: self.packed.leaky,
            },
        );
        let residual = residual.unwrap_or(ctx.dummy());
        let bind_group = bind_group(
            ctx,
            label,
            &self.pipeline,
            &[src, &self.weights, &self.vecs, residual, dst, &params],
        );
        let pairs = self.packed.ocg.div_ceil(2) as u32;
        Dispatch {
            label: label.to_string(),
            pipeline: self.pipeline.clone(),
            bind_group,
            workgroups: [w.div_ceil(4).div_ceil(16), h.div_ceil(4), batch * pairs],
        }
    }
}
