//! Launcher of `shaders/gemm.wgsl`: the per-position matrix products behind Winograd 3x3
//! convolutions (36 positions, raw sums) and 1x1 convolutions (1 position, with epilogue).

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::conv::{EpilogueParams, SLICE_MATS};
use super::Dispatch;
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::model::Conv;

/// Columns (tiles or pixels) per invocation: the shader's register tile along t.
pub const PX: usize = 8;
/// Output groups per invocation and per dispatch: the register tile along channels.
pub const OCB: usize = 4;

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

    /// Positions per 64 KiB uniform slice (0: the input channels alone do not fit).
    pub fn chunk(&self) -> usize {
        (SLICE_MATS / (self.icg * OCB)).min(self.positions)
    }

    fn chunks(&self) -> usize {
        self.positions.div_ceil(self.chunk())
    }

    /// The slice of block `b` and position chunk `c`: `[pos][ic][j]`.
    fn slice(&self, b: usize, c: usize) -> Vec<[f32; 16]> {
        let p0 = c * self.chunk();
        let p1 = (p0 + self.chunk()).min(self.positions);
        let mut out = Vec::with_capacity((p1 - p0) * self.icg * OCB);
        for pos in p0..p1 {
            for ic in 0..self.icg {
                for j in 0..OCB {
                    out.push(*self.mat(pos, b * OCB + j, ic));
                }
            }
        }
        out
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
    _pad: u32,
}

/// A batched product's weights resident on the device.
pub struct GpuGemm {
    pub packed: PackedGemm,
    pipeline: Arc<wgpu::ComputePipeline>,
    weights: wgpu::Buffer,
    /// Byte distance between slices (aligned for uniform binding offsets).
    stride: u64,
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
        let slices: Vec<Vec<[f32; 16]>> = (0..packed.blocks())
            .flat_map(|b| (0..packed.chunks()).map(move |c| (b, c)))
            .map(|(b, c)| packed.slice(b, c))
            .collect();
        let align = ctx.limits.min_uniform_buffer_offset_alignment as u64;
        let stride = ((packed.chunk() * packed.icg * OCB * 64) as u64).next_multiple_of(align);
        let size = stride * (slices.len() as u64 - 1) + (SLICE_MATS * 64) as u64;
        let mut bytes = vec![0u8; size as usize];
        for (i, s) in slices.iter().enumerate() {
            let at = i * stride as usize;
            let src: &[u8] = bytemuck::cast_slice(s);
            bytes[at..at + src.len()].copy_from_slice(src);
        }
        let weights = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("gemm weights"),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let vecs = match &packed.epilogue {
            Some(e) => ctx.upload("gemm bias", &e.vecs(packed.ocg)),
            None => ctx.upload("gemm bias", &[0f32; 4]),
        };
        Ok(GpuGemm {
            pipeline: ctx.pipeline("gemm", &[])?,
            weights,
            stride,
            vecs,
            packed,
        })
    }

    /// Record the products for `batch` items of `tiles` columns each, `v` -> `m`.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &self,
        ctx: &Context,
        label: &str,
        v: &wgpu::Buffer,
        residual: Option<&wgpu::Buffer>,
        m: &wgpu::Buffer,
        batch: u32,
        tiles: u32,
    ) -> Vec<Dispatch> {
        let p = &self.packed;
        let layout = self.pipeline.get_bind_group_layout(0);
        let residual = residual.unwrap_or(ctx.dummy());
        let (finish, oc, act, epi, leaky) = match &p.epilogue {
            Some(e) => (1, p.oc as u32, e.act, e.epi, e.leaky),
            None => (0, p.oc as u32, 0, 0, 0.0),
        };
        let mut out = Vec::new();
        for b in 0..p.blocks() {
            for c in 0..p.chunks() {
                let pos0 = c * p.chunk();
                let params = ctx.uniform(
                    "gemm params",
                    &Params {
                        tiles,
                        icg: p.icg as u32,
                        ocg: p.ocg as u32,
                        og: (b * OCB) as u32,
                        pos0: pos0 as u32,
                        positions: p.positions as u32,
                        finish,
                        oc,
                        act,
                        epi,
                        leaky,
                        _pad: 0,
                    },
                );
                let slice = wgpu::BufferBinding {
                    buffer: &self.weights,
                    offset: (b * p.chunks() + c) as u64 * self.stride,
                    size: wgpu::BufferSize::new((SLICE_MATS * 64) as u64),
                };
                let entries = [
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: v.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::Buffer(slice),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: self.vecs.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: residual.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: m.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 5,
                        resource: params.as_entire_binding(),
                    },
                ];
                let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(label),
                    layout: &layout,
                    entries: &entries,
                });
                out.push(Dispatch {
                    label: format!("{label} (gemm)"),
                    bind_group,
                    pipeline: self.pipeline.clone(),
                    workgroups: [
                        tiles.div_ceil(PX as u32).div_ceil(64),
                        (p.positions - pos0).min(p.chunk()) as u32,
                        batch,
                    ],
                });
            }
        }
        out
    }
}
