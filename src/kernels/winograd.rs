//! Winograd F(4x4, 3x3) convolution: the 3x3 path of the engine. Three kernels
//! (`winograd_input`, `winograd_gemm`, `winograd_output`) with one launcher each; this module
//! transforms the weights (U = G g G^T, once at load time) and strings the three launches.
//!
//! The transform matrices are Lavin and Gray's ("Fast Algorithms for Convolutional Neural
//! Networks", 2016). A 4x4 output tile costs 36 multiplies per channel pair instead of 144.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::conv::{EpilogueParams, OCB, SLICE_MATS};
use super::Dispatch;
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::model::Conv;

/// Output tile side.
pub const TILE: usize = 4;
/// Transform positions (6 x 6).
pub const POS: usize = 36;

/// G (6x3) of F(4, 3).
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Transformed weights and the epilogue, as the shaders and CPU twins read them.
#[derive(Debug, Clone)]
pub struct PackedWinograd {
    pub icg: usize,
    pub ocg: usize,
    pub oc: usize,
    /// U at `(pos * ocg_padded + g) * icg + ic` (column-major mat4x4, column = input channel).
    pub u: Vec<[f32; 16]>,
    pub epilogue: EpilogueParams,
}

impl PackedWinograd {
    pub fn new(c: &Conv) -> Self {
        assert_eq!(c.k, 3, "Winograd F(4x4, 3x3) needs a 3x3 kernel");
        let (icg, ocg) = (c.in_ch.div_ceil(4), c.out_ch.div_ceil(4));
        let ocgp = ocg.div_ceil(OCB) * OCB;
        let mut u = vec![[0f32; 16]; POS * ocgp * icg];
        for o in 0..c.out_ch {
            for i in 0..c.in_ch {
                let g = &c.weights[(o * c.in_ch + i) * 9..][..9];
                // G g G^T in f64, rounded once.
                let mut gg = [[0f64; 3]; 6];
                for (r, row) in gg.iter_mut().enumerate() {
                    for (kx, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|ky| G[r][ky] * g[ky * 3 + kx] as f64).sum();
                    }
                }
                for r in 0..6 {
                    for s in 0..6 {
                        let v: f64 = (0..3).map(|kx| gg[r][kx] * G[s][kx]).sum();
                        let m = &mut u[((r * 6 + s) * ocgp + o / 4) * icg + i / 4];
                        m[(i % 4) * 4 + o % 4] = v as f32;
                    }
                }
            }
        }
        PackedWinograd {
            icg,
            ocg,
            oc: c.out_ch,
            u,
            epilogue: EpilogueParams::new(c),
        }
    }

    pub fn blocks(&self) -> usize {
        self.ocg.div_ceil(OCB)
    }

    /// Positions per uniform slice.
    pub fn chunk(&self) -> usize {
        (SLICE_MATS / (self.icg * OCB)).min(POS)
    }

    /// The slice of block `b` and position chunk `c`: `[pos][ic][j]`.
    pub fn slice(&self, b: usize, c: usize) -> Vec<[f32; 16]> {
        let ocgp = self.blocks() * OCB;
        let p0 = c * self.chunk();
        let p1 = (p0 + self.chunk()).min(POS);
        let mut out = Vec::with_capacity((p1 - p0) * self.icg * OCB);
        for pos in p0..p1 {
            for ic in 0..self.icg {
                for j in 0..OCB {
                    out.push(self.u[(pos * ocgp + b * OCB + j) * self.icg + ic]);
                }
            }
        }
        out
    }
}

/// Tiles of an `h` x `w` image: (tiles_x, tiles).
pub fn tiles(h: usize, w: usize) -> (usize, usize) {
    let tx = w.div_ceil(TILE);
    (tx, tx * h.div_ceil(TILE))
}

/// Bytes of the transformed input and of the GEMM output for `batch` images of `h` x `w`.
pub fn scratch_bytes(in_ch: usize, out_ch: usize, batch: usize, h: usize, w: usize) -> (u64, u64) {
    let t = tiles(h, w).1;
    let per = (batch * POS * t * 16) as u64;
    (per * in_ch.div_ceil(4) as u64, per * out_ch.div_ceil(4) as u64)
}

/// A Winograd convolution resident on the device.
pub struct GpuWinograd {
    pub packed: PackedWinograd,
    weights: wgpu::Buffer,
    stride: u64,
    vecs: wgpu::Buffer,
    input: Arc<wgpu::ComputePipeline>,
    gemm: Arc<wgpu::ComputePipeline>,
    output: Arc<wgpu::ComputePipeline>,
}

impl GpuWinograd {
    pub fn new(ctx: &Context, packed: PackedWinograd) -> Result<Self> {
        if packed.chunk() == 0 {
            return Err(Error::Invalid(format!(
                "a 3x3 convolution with {} input channels does not fit the Winograd kernel's 64 KiB weight slices",
                packed.icg * 4
            )));
        }
        let slices: Vec<Vec<[f32; 16]>> = (0..packed.blocks())
            .flat_map(|b| (0..POS.div_ceil(packed.chunk())).map(move |c| (b, c)))
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
        let weights = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("winograd weights"),
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let vecs = ctx.upload("winograd bias", &packed.epilogue.vecs(packed.blocks() * OCB));
        Ok(GpuWinograd {
            weights,
            stride,
            vecs,
            input: ctx.pipeline("winograd_input", &[])?,
            gemm: ctx.pipeline("winograd_gemm", &[])?,
            output: ctx.pipeline("winograd_output", &[])?,
            packed,
        })
    }

    /// Record the three steps over `batch` images of `h` x `w`, using the scratch buffers
    /// `v` and `m` (at least [`scratch_bytes`]).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(&self, ctx: &Context, label: &str, src: &wgpu::Buffer, residual: Option<&wgpu::Buffer>, dst: &wgpu::Buffer, v: &wgpu::Buffer, m: &wgpu::Buffer, batch: u32, h: u32, w: u32) -> Vec<Dispatch> {
        let p = &self.packed;
        let (tx, t) = tiles(h as usize, w as usize);
        let (tx, t) = (tx as u32, t as u32);
        let mut out = vec![super::winograd_input::dispatch(ctx, label, &self.input, src, v, batch, p.icg as u32, h, w, tx, t)];
        let chunks = POS.div_ceil(p.chunk());
        for b in 0..p.blocks() {
            for c in 0..chunks {
                let positions = (POS - c * p.chunk()).min(p.chunk()) as u32;
                let slice = wgpu::BufferBinding {
                    buffer: &self.weights,
                    offset: (b * chunks + c) as u64 * self.stride,
                    size: wgpu::BufferSize::new((SLICE_MATS * 64) as u64),
                };
                out.push(super::winograd_gemm::dispatch(
                    ctx,
                    label,
                    &self.gemm,
                    v,
                    slice,
                    m,
                    super::winograd_gemm::Shape {
                        batch,
                        tiles: t,
                        icg: p.icg as u32,
                        ocg: p.ocg as u32,
                        og: (b * OCB) as u32,
                        pos0: (c * p.chunk()) as u32,
                        positions,
                    },
                ));
            }
        }
        out.push(super::winograd_output::dispatch(ctx, label, &self.output, m, &self.vecs, residual, dst, p, batch, h, w, tx, t));
        out
    }
}
