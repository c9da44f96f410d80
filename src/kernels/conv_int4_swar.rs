//! Launcher of `shaders/conv_int4_swar.wgsl`: the 1x1 and 3x3 integer convolutions of
//! `conv_int4` (same nibble input, same sums) computed two multiply-accumulates per 32-bit
//! multiply, for devices whose integer dot product is not hardware (software rasterizers).

use std::sync::Arc;

use super::conv_int8::RowConv;
use super::gemm_int8::OCB;
use super::int_store::Store;
use super::{Dispatch, UniformSlices};
use crate::error::{Error, Result};
use crate::gpu::Context;

/// Channel pairs (first, second) of an 8-channel word, in the shader's order.
pub const PAIRS: [(usize, usize); 4] = [(0, 2), (1, 3), (4, 6), (5, 7)];

/// The pair weights `W = w_s + w_f 2^16` in the shader's layout, and the corrections.
#[derive(Debug, Clone)]
pub struct PackedSwar {
    pub k: usize,
    pub icw: usize,
    pub ocg: usize,
    /// `[block][(tap * icw + iw) * 4 + q][j]` -> 4 output channels of group `block * OCB + j`.
    pub w: Vec<[i32; 4]>,
    pub corr: Vec<[i32; 4]>,
}

impl PackedSwar {
    /// Whether the halves stay exact: every sum of `k x k x in_ch` products of `w_bits` by
    /// `a_bits` signed values below 2^15 in magnitude.
    pub fn applies(k: usize, in_ch: usize, w_bits: u32, a_bits: u32) -> bool {
        let largest = 1usize << (w_bits - 1 + a_bits - 1);
        (k == 1 || k == 3) && w_bits <= 4 && a_bits <= 4 && k * k * in_ch * largest < 1 << 15
    }

    /// From weight codes `[o][i][ky][kx]` and one correction per output channel.
    pub fn new(k: usize, in_ch: usize, out_ch: usize, codes: &[i8], corr: &[i32]) -> Self {
        let taps = k * k;
        assert_eq!(codes.len(), out_ch * in_ch * taps);
        let (icw, ocg) = (in_ch.div_ceil(8), out_ch.div_ceil(4));
        let blocks = ocg.div_ceil(OCB);
        let per_block = taps * icw * 4 * OCB;
        let mut w = vec![[0i32; 4]; blocks * per_block];
        let code = |o: usize, i: usize, tap: usize| -> i32 {
            if i < in_ch {
                codes[(o * in_ch + i) * taps + tap] as i32
            } else {
                0
            }
        };
        for o in 0..out_ch {
            let (g, l) = (o / 4, o % 4);
            for tap in 0..taps {
                for iw in 0..icw {
                    for (q, &(f, s)) in PAIRS.iter().enumerate() {
                        let (cf, cs) = (8 * iw + f, 8 * iw + s);
                        let v =
                            code(o, cs, tap).wrapping_add(code(o, cf, tap).wrapping_mul(1 << 16));
                        let idx = ((tap * icw + iw) * 4 + q) * OCB + g % OCB;
                        w[(g / OCB) * per_block + idx][l] = v;
                    }
                }
            }
        }
        let mut corr: Vec<[i32; 4]> = (0..ocg)
            .map(|g| std::array::from_fn(|l| corr.get(4 * g + l).copied().unwrap_or(0)))
            .collect();
        corr.resize(blocks * OCB, [0; 4]);
        PackedSwar {
            k,
            icw,
            ocg,
            w,
            corr,
        }
    }

    pub fn blocks(&self) -> usize {
        self.ocg.div_ceil(OCB)
    }

    fn per_block(&self) -> usize {
        self.w.len() / self.blocks()
    }

    /// The 4 weights of pair `q` of input word `iw` at `tap`, for output group `g`.
    pub fn pair(&self, tap: usize, iw: usize, q: usize, g: usize) -> &[i32; 4] {
        &self.w[(g / OCB) * self.per_block() + ((tap * self.icw + iw) * 4 + q) * OCB + g % OCB]
    }
}

/// Pair weights resident on the device, one uniform slice per block of output groups.
pub struct GpuSwar {
    pub packed: PackedSwar,
    pipeline: Arc<wgpu::ComputePipeline>,
    weights: UniformSlices,
    corr: wgpu::Buffer,
}

impl GpuSwar {
    pub fn new(ctx: &Context, packed: PackedSwar) -> Result<Self> {
        let per = packed.per_block();
        if per * 16 > 64 << 10 {
            return Err(Error::Invalid(format!(
                "{} input words x {} taps do not fit the pair kernel's weight slice",
                packed.icw,
                packed.k * packed.k
            )));
        }
        let slices: Vec<&[[i32; 4]]> = packed.w.chunks(per).collect();
        Ok(GpuSwar {
            pipeline: ctx.pipeline("conv_int4_swar", &[])?,
            weights: UniformSlices::new(ctx, "int4 pair weights", &slices),
            corr: ctx.upload("int4 pair corrections", &packed.corr),
            packed,
        })
    }

    /// Record the sums over nibble-packed `a` (`batch x icw x h x w` words), reading `pad`
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
        let conv = RowConv {
            pipeline: self.pipeline.clone(),
            weights: &self.weights,
            corr: &self.corr,
            ocg: self.packed.ocg,
            words: self.packed.icw,
            k: self.packed.k as u32,
            kind: "int4 pair conv",
        };
        conv.dispatch(ctx, label, a, dst, store, batch, h, w, pads)
    }
}
