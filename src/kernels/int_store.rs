//! The integer kernels' shared epilogue (`shaders/shared/int_store.wgsl`, part of
//! `conv_int8`, `conv_int4` and `gemm_int8`): what a kernel writes, and the uniform that
//! says so. Fusing it into the kernels is what lets features travel between integer layers
//! packed, without an i32 or f32 round trip through memory.

use super::conv::EpilogueParams;
use super::quantize::Eq1;
use crate::gpu::Context;
use crate::quant::ActQuant;

/// A layer's float epilogue on the device: bias, PReLU slopes and the dequantization scales
/// (weight step x activation step, per output channel), one buffer of `3 x ocg` vec4.
pub struct IntEpilogue {
    pub params: EpilogueParams,
    pub oc: usize,
    vecs: wgpu::Buffer,
}

impl IntEpilogue {
    pub fn new(ctx: &Context, params: EpilogueParams, scales: &[f32], oc: usize) -> Self {
        let ocg = oc.div_ceil(4);
        let mut vecs = params.vecs(ocg);
        vecs.extend_from_slice(scales);
        vecs.resize(3 * ocg * 4, 0.0);
        IntEpilogue {
            vecs: ctx.upload("int epilogue", &vecs),
            params,
            oc,
        }
    }
}

/// What an integer kernel writes to its destination.
#[derive(Clone, Copy)]
pub enum Store<'a> {
    /// The exact i32 sums, one vec4 per output group and column.
    Sums,
    /// The dequantized sums through the layer's epilogue, as C4HW f32.
    Float {
        epilogue: &'a IntEpilogue,
        residual: Option<&'a wgpu::Buffer>,
    },
    /// Like `Float`, then quantized with `next` (the input quantizer of the layer that
    /// reads the result) and packed: four bytes per word, or eight nibbles with `nibbles`.
    Packed {
        epilogue: &'a IntEpilogue,
        residual: Option<&'a wgpu::Buffer>,
        next: &'a ActQuant,
        nibbles: bool,
    },
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StoreParams {
    plane: u32,
    ocg: u32,
    oc: u32,
    act: u32,
    epi: u32,
    leaky: f32,
    mode: u32,
    _pad: u32,
    next: Eq1,
}

impl Store<'_> {
    /// The uniform for a kernel of `ocg` output groups (`oc` channels without an epilogue)
    /// and `plane` columns per image.
    pub(crate) fn uniform(&self, ctx: &Context, ocg: u32, plane: u32) -> wgpu::Buffer {
        let mut p: StoreParams = bytemuck::Zeroable::zeroed();
        p.plane = plane;
        p.ocg = ocg;
        p.oc = ocg * 4;
        let (epilogue, next, mode) = match *self {
            Store::Sums => (None, None, 0),
            Store::Float { epilogue, .. } => (Some(epilogue), None, 1),
            Store::Packed {
                epilogue,
                next,
                nibbles,
                ..
            } => (Some(epilogue), Some(next), if nibbles { 3 } else { 2 }),
        };
        p.mode = mode;
        if let Some(e) = epilogue {
            assert_eq!(e.oc.div_ceil(4) as u32, ocg, "epilogue of another layer");
            p.oc = e.oc as u32;
            p.act = e.params.act;
            p.epi = e.params.epi;
            p.leaky = e.params.leaky;
        }
        if let Some(q) = next {
            assert!(!matches!(self, Store::Packed { nibbles: true, .. }) || q.bits <= 4);
            p.next = Eq1::new(q);
        }
        ctx.uniform("int store params", &p)
    }

    /// The `vecs` and `residual` bindings.
    pub(crate) fn inputs<'b>(&'b self, ctx: &'b Context) -> [&'b wgpu::Buffer; 2] {
        match self {
            Store::Sums => [ctx.dummy(), ctx.dummy()],
            Store::Float { epilogue, residual }
            | Store::Packed {
                epilogue, residual, ..
            } => [&epilogue.vecs, residual.unwrap_or(ctx.dummy())],
        }
    }
}
