//! Launcher of `shaders/gemm_int8.wgsl`: the exact integer product of packed 8-bit weights and
//! activations with folded zero-point corrections (the building block of issue 3's integer
//! modes: the 1x1 convolutions, and the 3x3 ones where `conv_int8` does not apply).

use std::sync::Arc;

use super::int_store::Store;
use super::{bind_resources, Dispatch, Slicing, UniformSlices};
use crate::error::{Error, Result};
use crate::gpu::Context;

/// Output groups per invocation and dispatch (the shader's register tile).
pub const OCB: usize = 4;
/// Columns per invocation.
pub const PX: usize = 8;

/// Integer weights in the shader's layout and the per-output-channel corrections.
#[derive(Debug, Clone)]
pub struct PackedGemmInt8 {
    pub positions: usize,
    pub icg: usize,
    pub ocg: usize,
    /// `[pos][g padded to whole blocks][ic]` -> 4 words, one per output channel of group `g`,
    /// each packing the weights of input channels `4 ic .. 4 ic + 4` as signed bytes.
    pub w: Vec<[u32; 4]>,
    /// Per output group: the folded zero-point term added to every sum.
    pub corr: Vec<[i32; 4]>,
}

impl PackedGemmInt8 {
    /// From weight codes `codes[pos][o][i]` (`positions x out_ch x in_ch`, in -128..=127) and
    /// one correction per output channel.
    pub fn new(positions: usize, in_ch: usize, out_ch: usize, codes: &[i8], corr: &[i32]) -> Self {
        assert_eq!(codes.len(), positions * out_ch * in_ch);
        assert_eq!(corr.len(), out_ch);
        let (icg, ocg) = (in_ch.div_ceil(4), out_ch.div_ceil(4));
        let ocgp = ocg.div_ceil(OCB) * OCB;
        let mut w = vec![[0u32; 4]; positions * ocgp * icg];
        for pos in 0..positions {
            for o in 0..out_ch {
                for i in 0..in_ch {
                    let byte = codes[(pos * out_ch + o) * in_ch + i] as u8 as u32;
                    w[(pos * ocgp + o / 4) * icg + i / 4][o % 4] |= byte << (8 * (i % 4));
                }
            }
        }
        let corr = (0..ocg)
            .map(|g| std::array::from_fn(|l| corr.get(4 * g + l).copied().unwrap_or(0)))
            .collect();
        PackedGemmInt8 {
            positions,
            icg,
            ocg,
            w,
            corr,
        }
    }

    /// A K x K convolution (weight codes `[o][i][ky][kx]`) as the product over the
    /// `im2col_int8` gather: input word `tap * icg + ic` holds channels `4 ic..4 ic + 4` at tap.
    pub fn conv(k: usize, in_ch: usize, out_ch: usize, codes: &[i8], corr: &[i32]) -> Self {
        let (taps, cp) = (k * k, in_ch.div_ceil(4) * 4);
        assert_eq!(codes.len(), out_ch * in_ch * taps);
        let mut flat = vec![0i8; out_ch * taps * cp];
        for o in 0..out_ch {
            for i in 0..in_ch {
                for tap in 0..taps {
                    flat[(o * taps + tap) * cp + i] = codes[(o * in_ch + i) * taps + tap];
                }
            }
        }
        Self::new(1, taps * cp, out_ch, &flat, corr)
    }

    pub fn blocks(&self) -> usize {
        self.ocg.div_ceil(OCB)
    }

    /// The 4 words of output group `g`, input group `ic` at `pos`.
    pub fn words(&self, pos: usize, g: usize, ic: usize) -> &[u32; 4] {
        &self.w[(pos * self.blocks() * OCB + g) * self.icg + ic]
    }

    /// How the weights are cut into uniform slices.
    pub(crate) fn slicing(&self) -> Slicing {
        Slicing::new::<[u32; 4]>(self.positions, self.icg, self.ocg)
    }

    /// Positions per uniform slice (0: the input channels alone do not fit).
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
    _pad: [u32; 2],
}

/// Integer weights resident on the device.
pub struct GpuGemmInt8 {
    pub packed: PackedGemmInt8,
    pipeline: Arc<wgpu::ComputePipeline>,
    /// Also read by `conv_int8`, which shares the layout.
    pub(crate) weights: UniformSlices,
    pub(crate) corr: wgpu::Buffer,
}

impl GpuGemmInt8 {
    pub fn new(ctx: &Context, packed: PackedGemmInt8) -> Result<Self> {
        if packed.chunk() == 0 {
            return Err(Error::Invalid(format!(
                "{} input channels do not fit the int8 gemm's weight slices",
                packed.icg * 4
            )));
        }
        let slices = packed.slicing().slices(&packed.w);
        let refs: Vec<&[[u32; 4]]> = slices.iter().map(Vec::as_slice).collect();
        // whole blocks: the kernels read the corrections of all OCB groups they compute
        let mut corr = packed.corr.clone();
        corr.resize(packed.blocks() * OCB, [0; 4]);
        Ok(GpuGemmInt8 {
            pipeline: ctx.pipeline("gemm_int8", &[])?,
            weights: UniformSlices::new(ctx, "int8 weights", &refs),
            corr: ctx.upload("int8 corrections", &corr),
            packed,
        })
    }

    /// Record the products for `batch` items of `tiles` columns: packed `a` -> `dst`, written
    /// as `store` says (an epilogue needs a single position).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &self,
        ctx: &Context,
        label: &str,
        a: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        store: &Store<'_>,
        batch: u32,
        tiles: u32,
    ) -> Vec<Dispatch> {
        let p = &self.packed;
        assert!(p.positions == 1 || matches!(store, Store::Sums));
        let store_params = store.uniform(ctx, p.ocg as u32, tiles);
        let [vecs, residual] = store.inputs(ctx);
        let mut out = Vec::new();
        for slot in p.slicing().slots() {
            let params = ctx.uniform(
                "int8 gemm params",
                &Params {
                    tiles,
                    icg: p.icg as u32,
                    ocg: p.ocg as u32,
                    og: (slot.block * OCB) as u32,
                    pos0: slot.pos0 as u32,
                    positions: p.positions as u32,
                    _pad: [0; 2],
                },
            );
            let bind_group = bind_resources(
                ctx,
                label,
                &self.pipeline,
                vec![
                    a.as_entire_binding(),
                    self.weights.binding(slot.index),
                    self.corr.as_entire_binding(),
                    vecs.as_entire_binding(),
                    residual.as_entire_binding(),
                    dst.as_entire_binding(),
                    params.as_entire_binding(),
                    store_params.as_entire_binding(),
                ],
            );
            out.push(Dispatch {
                label: format!("{label} (int8 gemm)"),
                bind_group,
                pipeline: self.pipeline.clone(),
                workgroups: [
                    tiles.div_ceil(PX as u32).div_ceil(64),
                    slot.positions as u32,
                    batch,
                ],
            });
        }
        out
    }
}
