//! Winograd F(4x4, 3x3) convolution: the 3x3 path of the engine. Three kernels
//! (`winograd_input`, `gemm` over 36 positions, `winograd_output`) with one launcher each;
//! this module transforms the weights (U = G g G^T, once at load time) and strings the
//! launches: [`transform`] per input (the plan may share one transformed input between
//! several convolutions, see exec.rs) and [`GpuWinograd::product`] per convolution.
//!
//! The transform matrices are Lavin and Gray's ("Fast Algorithms for Convolutional Neural
//! Networks", 2016). A 4x4 output tile costs 36 multiplies per channel pair instead of 144.

use std::sync::Arc;

use super::conv::EpilogueParams;
use super::gemm::{GpuGemm, PackedGemm};
pub use super::winograd_input::Slot;
use super::Dispatch;
use crate::error::Result;
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

/// Transformed weights (a 36-position product) and the epilogue of the output transform.
#[derive(Debug, Clone)]
pub struct PackedWinograd {
    pub gemm: PackedGemm,
    pub epilogue: EpilogueParams,
}

impl PackedWinograd {
    pub fn new(c: &Conv) -> Self {
        assert_eq!(c.k, 3, "Winograd F(4x4, 3x3) needs a 3x3 kernel");
        let mut gemm = PackedGemm::zeros(POS, c.in_ch, c.out_ch, None);
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
                for (r, gr) in gg.iter().enumerate() {
                    for (s, gs) in G.iter().enumerate() {
                        let v: f64 = (0..3).map(|kx| gr[kx] * gs[kx]).sum();
                        gemm.set(r * 6 + s, o, i, v as f32);
                    }
                }
            }
        }
        PackedWinograd {
            gemm,
            epilogue: EpilogueParams::new(c),
        }
    }

    pub fn icg(&self) -> usize {
        self.gemm.icg
    }

    pub fn ocg(&self) -> usize {
        self.gemm.ocg
    }

    pub fn oc(&self) -> usize {
        self.gemm.oc
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
    (
        per * in_ch.div_ceil(4) as u64,
        per * out_ch.div_ceil(4) as u64,
    )
}

/// A Winograd convolution resident on the device.
pub struct GpuWinograd {
    pub packed: PackedWinograd,
    gemm: GpuGemm,
    vecs: wgpu::Buffer,
    output: Arc<wgpu::ComputePipeline>,
}

impl GpuWinograd {
    pub fn new(ctx: &Context, packed: PackedWinograd) -> Result<Self> {
        let vecs = ctx.upload("winograd bias", &packed.epilogue.vecs(packed.ocg()));
        Ok(GpuWinograd {
            gemm: GpuGemm::new(ctx, packed.gemm.clone())?,
            vecs,
            output: ctx.pipeline("winograd_output", &[])?,
            packed,
        })
    }

    /// Steps 2 and 3 on an input already transformed into `v`, whose rows hold `vgroups`
    /// channel groups (this convolution reads the first `icg`).
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        ctx: &Context,
        label: &str,
        v: &wgpu::Buffer,
        vgroups: u32,
        residual: Option<&wgpu::Buffer>,
        dst: &wgpu::Buffer,
        m: &wgpu::Buffer,
        batch: u32,
        h: u32,
        w: u32,
    ) -> Result<Vec<Dispatch>> {
        let p = &self.packed;
        let (tx, t) = tiles(h as usize, w as usize);
        let (tx, t) = (tx as u32, t as u32);
        let mut out = self
            .gemm
            .dispatch(ctx, label, v, vgroups, None, m, batch, t)?;
        out.push(super::winograd_output::dispatch(
            ctx,
            label,
            &self.output,
            m,
            &self.vecs,
            residual,
            dst,
            p,
            batch,
            h,
            w,
            tx,
            t,
        ));
        Ok(out)
    }
}

/// Step 1 alone: transform `batch` images of `icg` channel groups, `h` x `w`, from `src` into
/// `slot` of `v` (`pipeline`: `winograd_input`).
#[allow(clippy::too_many_arguments)]
pub fn transform(
    ctx: &Context,
    label: &str,
    pipeline: &Arc<wgpu::ComputePipeline>,
    src: &wgpu::Buffer,
    icg: u32,
    v: &wgpu::Buffer,
    slot: Slot,
    batch: u32,
    h: u32,
    w: u32,
) -> Dispatch {
    let (tx, t) = tiles(h as usize, w as usize);
    super::winograd_input::dispatch(
        ctx, label, pipeline, src, v, slot, batch, icg, h, w, tx as u32, t as u32,
    )
}
