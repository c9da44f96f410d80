//! Launcher of `shaders/gemm.wgsl`: the per-position matrix products behind Winograd 3x3
//! convolutions (36 positions, raw sums) and 1x1 convolutions (1 position, with epilogue).

use super::conv::EpilogueParams;
use super::{bind_resources, Dispatch, Slicing, UniformSlices};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::model::Conv;

/// Columns (tiles or pixels) per invocation: the shader's register tile along t.
pub const PX: usize = 8;
/// Output groups per invocation and per dispatch: the register tile along channels.
pub const OCB: usize = 4;

/// Workgroup sizes the shader is compiled for (its `WG` override), largest first.
const WORKGROUP_SIZES: [u32; 4] = [64, 32, 16, 8];

/// The workgroup size for `invocations` along t: the largest that pads them by at most an
/// eighth. Invocations past the last column still run the whole input loop (see the shader),
/// so a 64-wide group over a 64x64 Winograd window (32 invocations) wasted half the work,
/// and one over a small window almost all of it; narrower groups cost nothing on CPU
/// adapters and keep real GPUs at whole warps wherever the work is large enough to matter.
pub fn workgroup_size(invocations: u32) -> u32 {
    let padded = |wg: u32| invocations.div_ceil(wg) * wg;
    WORKGROUP_SIZES
        .into_iter()
        .find(|&wg| (padded(wg) - invocations) * 8 <= padded(wg))
        .unwrap_or(8)
}

/// Weights of a batched product and what to do with its sums.
#[derive(Debug, Clone)]
pub struct PackedGemm {
    /// Independent positions P.
    pub positions: usize,
    pub icg: usize,
    pub ocg: usize,
    pub oc: usize,
    /// U at `(pos * ocg_padded + g) * icg + ic` (column-major mat4x4, column = input channel,
    /// row = output channel), output groups padded to whole blocks.
    pub u: Vec<[f32; 16]>,
    /// `None`: store the raw sums (Winograd); `Some`: bias, activation, residual (1x1 conv).
    pub epilogue: Option<EpilogueParams>,
}

impl PackedGemm {
    /// Zero weights for `positions` x `out_ch` x `in_ch`, to be filled with [`PackedGemm::set`].
    pub fn zeros(
        positions: usize,
        in_ch: usize,
        out_ch: usize,
        epilogue: Option<EpilogueParams>,
    ) -> Self {
        let (icg, ocg) = (in_ch.div_ceil(4), out_ch.div_ceil(4));
        PackedGemm {
            positions,
            icg,
            ocg,
            oc: out_ch,
            u: vec![[0f32; 16]; positions * ocg.div_ceil(OCB) * OCB * icg],
            epilogue,
        }
    }

    /// Set the weight from input channel `i` to output channel `o` at position `pos`.
    pub fn set(&mut self, pos: usize, o: usize, i: usize, w: f32) {
        let ocgp = self.blocks() * OCB;
        self.u[(pos * ocgp + o / 4) * self.icg + i / 4][(i % 4) * 4 + o % 4] = w;
    }

    /// The matrix of output group `g`, input group `ic` at `pos`.
    pub fn mat(&self, pos: usize, g: usize, ic: usize) -> &[f32; 16] {
        &self.u[(pos * self.blocks() * OCB + g) * self.icg + ic]
    }

    /// A 1x1 convolution as a one-position product with its epilogue.
    pub fn pointwise(c: &Conv) -> Self {
        assert_eq!(c.k, 1);
        let mut p = Self::zeros(1, c.in_ch, c.out_ch, Some(EpilogueParams::new(c)));
        for o in 0..c.out_ch {
            for i in 0..c.in_ch {
                p.set(0, o, i, c.weights[o * c.in_ch + i]);
            }
        }
        p
    }

    pub fn blocks(&self) -> usize {
        self.ocg.div_ceil(OCB)
    }

    /// How the weights are cut into uniform slices.
    fn slicing(&self) -> Slicing {
        Slicing::new::<[f32; 16]>(self.positions, self.icg, self.ocg)
    }

    /// Positions per 64 KiB uniform slice (0: the input channels alone do not fit).
    pub fn chunk(&self) -> usize {
        self.slicing().chunk
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    tiles: u32,
    icg: u32,
    ocg: u32,
    og: u32,
    pos0: u32,
    positions: u32,
    finish: u32,
    oc: u32,
    act: u32,
    epi: u32,
    leaky: f32,
    vgroups: u32,
}

/// A batched product's weights resident on the device.
pub struct GpuGemm {
    pub packed: PackedGemm,
    /// One slice per (block of output groups, chunk of positions).
    weights: UniformSlices,
    vecs: wgpu::Buffer,
}

impl GpuGemm {
    pub fn new(ctx: &Context, packed: PackedGemm) -> Result<Self> {
        if packed.chunk() == 0 {
            return Err(Error::Invalid(format!(
                "{} input channels do not fit the 64 KiB weight slices of the gemm kernel",
                packed.icg * 4
            )));
        }
        let slices = packed.slicing().slices(&packed.u);
        let refs: Vec<&[[f32; 16]]> = slices.iter().map(Vec::as_slice).collect();
        let weights = UniformSlices::new(ctx, "gemm weights", &refs);
        let vecs = match &packed.epilogue {
            Some(e) => ctx.upload("gemm bias", &e.vecs(packed.ocg)),
            None => ctx.upload("gemm bias", &[0f32; 4]),
        };
        Ok(GpuGemm {
            weights,
            vecs,
            packed,
        })
    }

    /// Record the products for `batch` items of `tiles` columns each, `v` -> `m`; rows of `v`
    /// hold `vgroups` channel groups (at least the product's `icg`, see `shaders/gemm.wgsl`).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &self,
        ctx: &Context,
        label: &str,
        v: &wgpu::Buffer,
        vgroups: u32,
        residual: Option<&wgpu::Buffer>,
        m: &wgpu::Buffer,
        batch: u32,
        tiles: u32,
    ) -> Result<Vec<Dispatch>> {
        let p = &self.packed;
        if (vgroups as usize) < p.icg {
            return Err(Error::Invalid(format!(
                "{label}: V rows of {vgroups} channel groups for a product over {}",
                p.icg
            )));
        }
        let invocations = tiles.div_ceil(PX as u32);
        let wg = workgroup_size(invocations);
        let pipeline = ctx.pipeline("gemm", &[("WG", wg as u64)])?;
        let residual = residual.unwrap_or(ctx.dummy());
        let (finish, oc, act, epi, leaky) = match &p.epilogue {
            Some(e) => (1, p.oc as u32, e.act, e.epi, e.leaky),
            None => (0, p.oc as u32, 0, 0, 0.0),
        };
        let mut out = Vec::new();
        for slot in p.slicing().slots() {
            let params = ctx.uniform(
                "gemm params",
                &Params {
                    tiles,
                    icg: p.icg as u32,
                    ocg: p.ocg as u32,
                    og: (slot.block * OCB) as u32,
                    pos0: slot.pos0 as u32,
                    positions: p.positions as u32,
                    finish,
                    oc,
                    act,
                    epi,
                    leaky,
                    vgroups,
                },
            );
            let bind_group = bind_resources(
                ctx,
                label,
                &pipeline,
                vec![
                    v.as_entire_binding(),
                    self.weights.binding(slot.index),
                    self.vecs.as_entire_binding(),
                    residual.as_entire_binding(),
                    m.as_entire_binding(),
                    params.as_entire_binding(),
                ],
            );
            out.push(Dispatch {
                label: format!("{label} (gemm)"),
                bind_group,
                pipeline: pipeline.clone(),
                workgroups: [invocations.div_ceil(wg), slot.positions as u32, batch],
            });
        }
        Ok(out)
    }
}
