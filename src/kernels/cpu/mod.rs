//! CPU twins of the kernels: each mirrors its shader's loops and arithmetic order so tests can
//! compare the two on random inputs with a tight, named tolerance. Together they also form the
//! CPU reference executor of a whole graph ([`run_graph`]).

mod argmax;
mod binary;
mod concat;
mod conv;
mod conv_int4;
mod conv_int4_swar;
mod conv_int8;
mod cost_volume;
mod gemm;
mod gemm_int8;
mod im2col_int8;
mod int_store;
mod interp;
mod peak_dot;
mod peak_fma;
mod pixel_shuffle;
mod quantize;
mod refer_prep;
mod unary;
mod warp;
mod winograd;

pub use argmax::argmax;
pub use binary::{binary, per_channel_group, Operand};
pub use concat::concat;
pub use conv::conv;
pub use conv_int4::conv_int4;
pub use conv_int4_swar::conv_int4_swar;
pub use conv_int8::conv_int8;
pub use cost_volume::cost_volume;
pub use gemm::{gemm, pointwise};
pub use gemm_int8::gemm_int8;
pub use im2col_int8::im2col_int8;
pub use int_store::{int_store, Store};
pub use interp::interp;
pub use peak_dot::peak_dot;
pub use peak_fma::peak_fma;
pub use pixel_shuffle::pixel_shuffle;
pub use quantize::quantize;
pub use refer_prep::refer_prep;
pub use unary::unary;
pub use warp::warp;
pub use winograd::{winograd, winograd_input, winograd_input_into, winograd_output};

use crate::model::{Graph, Op, Rhs};

/// A batch of image tensors in the engine's C4HW layout (see `shaders/shared/common.wgsl`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Channel groups of four.
    pub fn groups(&self) -> usize {
        self.c.div_ceil(4)
    }

    pub fn zeros(n: usize, c: usize, h: usize, w: usize) -> Self {
        Tensor {
            n,
            c,
            h,
            w,
            data: vec![0.0; n * c.div_ceil(4) * h * w * 4],
        }
    }

    /// Filled with NaN, so a kernel that skips an element is caught by a comparison.
    pub fn poisoned(n: usize, c: usize, h: usize, w: usize) -> Self {
        let mut t = Self::zeros(n, c, h, w);
        t.data.fill(f32::NAN);
        t
    }

    /// Index of the vec4 holding channel group `g` of pixel (y, x) in batch item `n`.
    pub fn vec_index(&self, n: usize, g: usize, y: usize, x: usize) -> usize {
        ((n * self.groups() + g) * self.h + y) * self.w + x
    }

    pub fn get(&self, n: usize, c: usize, y: usize, x: usize) -> f32 {
        self.data[self.vec_index(n, c / 4, y, x) * 4 + c % 4]
    }

    pub fn set(&mut self, n: usize, c: usize, y: usize, x: usize, v: f32) {
        let i = self.vec_index(n, c / 4, y, x) * 4 + c % 4;
        self.data[i] = v;
    }

    pub fn vec4(&self, i: usize) -> [f32; 4] {
        [
            self.data[4 * i],
            self.data[4 * i + 1],
            self.data[4 * i + 2],
            self.data[4 * i + 3],
        ]
    }

    pub fn set_vec4(&mut self, i: usize, v: [f32; 4]) {
        self.data[4 * i..4 * i + 4].copy_from_slice(&v);
    }

    /// Build from planar NCHW data.
    pub fn from_nchw(n: usize, c: usize, h: usize, w: usize, nchw: &[f32]) -> Self {
        assert_eq!(nchw.len(), n * c * h * w);
        let mut t = Self::zeros(n, c, h, w);
        for b in 0..n {
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        t.set(b, ch, y, x, nchw[((b * c + ch) * h + y) * w + x]);
                    }
                }
            }
        }
        t
    }

    /// The planar NCHW data (the inverse of [`Tensor::from_nchw`]).
    pub fn to_nchw(&self) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.n * self.c * self.h * self.w);
        for b in 0..self.n {
            for ch in 0..self.c {
                for y in 0..self.h {
                    for x in 0..self.w {
                        v.push(self.get(b, ch, y, x));
                    }
                }
            }
        }
        v
    }
}

/// `mask_lanes` of `common.wgsl`: lanes of group `g` past the real channels become zero.
pub(crate) fn mask_lanes(v: [f32; 4], g: usize, channels: usize) -> [f32; 4] {
    std::array::from_fn(|j| if g * 4 + j < channels { v[j] } else { 0.0 })
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `activate` of `common.wgsl`.
pub(crate) fn activate(x: f32, act: u32, leaky: f32, slope: f32) -> f32 {
    match act {
        1 => x.max(0.0),
        2 => {
            if x >= 0.0 {
                x
            } else {
                x * leaky
            }
        }
        3 => {
            if x >= 0.0 {
                x
            } else {
                x * slope
            }
        }
        4 => x * sigmoid(x),
        5 => sigmoid(x),
        _ => x,
    }
}

/// Run a whole graph on the CPU twins (the reference the GPU path is tested against).
pub fn run_graph(graph: &Graph, input: &Tensor) -> Tensor {
    run_graph_with(graph, &[input])
}

/// [`run_graph`] where `inputs[i]` gives value `i` (the graph input is value 0 in such graphs;
/// the others are values no node produces).
pub fn run_graph_with(graph: &Graph, inputs: &[&Tensor]) -> Tensor {
    assert_eq!(inputs[0].c, graph.input_channels());
    let mut values: Vec<Option<Tensor>> = vec![None; graph.values.len()];
    values[graph.input] = Some(inputs[0].clone());
    for (i, t) in inputs.iter().enumerate().skip(1) {
        values[i] = Some((*t).clone());
    }
    for node in &graph.nodes {
        let get = |v: usize| values[v].as_ref().expect("value computed before use");
        let x = get(node.inputs[0]);
        let out = match &node.op {
            Op::Conv(c) => {
                use crate::kernels::{conv, gemm, winograd};
                let r = c.epilogue.residual().map(get);
                match conv::algorithm(c) {
                    conv::Algorithm::Winograd => {
                        self::winograd(x, &winograd::PackedWinograd::new(c), r)
                    }
                    conv::Algorithm::Gemm => pointwise(x, &gemm::PackedGemm::pointwise(c), r),
                    conv::Algorithm::Direct => self::conv(x, &conv::PackedConv::new(c), r),
                }
            }
            Op::Binary { kind, rhs } => {
                let b = match rhs {
                    Rhs::Tensor => binary::Operand::Tensor(get(node.inputs[1])),
                    Rhs::Scalar(s) => binary::Operand::Scalar(*s),
                    Rhs::PerChannel(v) => binary::Operand::PerChannel(v),
                };
                binary(x, b, *kind)
            }
            Op::Act(a) => unary(x, a),
            Op::Concat => {
                let ins: Vec<&Tensor> = node.inputs.iter().map(|&v| get(v)).collect();
                concat(&ins)
            }
            Op::PixelShuffle { factor } => pixel_shuffle(x, *factor as usize),
            Op::InterpNearest { factor } => interp(x, *factor as usize),
            Op::RefEr { bits, clip } => {
                let fr = get(node.inputs[1]);
                let cells = crate::exec::refer_cells(x.h, x.w);
                let q = refer_prep(&x.data, x.n, x.c, x.h, x.w, *bits, *clip);
                let r = refer_prep(&fr.data, x.n, x.c, x.h, x.w, *bits, *clip);
                let e = cost_volume(&q, &r, x.n, cells, x.groups());
                let best = argmax(&e, x.n, cells);
                Tensor {
                    data: warp(&x.data, &fr.data, &best, x.n, x.c, x.h, x.w),
                    ..x.clone()
                }
            }
        };
        values[node.output] = Some(out);
    }
    values[graph.output].take().expect("graph output computed")
}
