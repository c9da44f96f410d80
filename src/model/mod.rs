//! The graph IR every backend executes, and the loaders that build it.
//!
//! A [`Graph`] is a list of [`Node`]s in execution order over numbered values. Values are
//! image-shaped tensors (channels x height x width); their spatial size is the input's times a
//! per-value integer `scale` (pixel shuffle and interpolation multiply it), so one graph serves
//! any input size. Loaders resolve everything the executors should not care about: `Split` is an
//! alias, `MemoryData` constants become per-channel operands, fp16 blobs become f32.

pub mod fuse;
pub mod ncnn;

use std::path::Path;

use crate::error::Result;

/// Index of a value (tensor) in [`Graph::values`].
pub type ValueId = usize;

/// A whole network: a single image-like input, a single output.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Human-readable name (file stem of the model).
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub input: ValueId,
    pub output: ValueId,
}

/// Static facts about one tensor.
#[derive(Debug, Clone)]
pub struct Value {
    pub name: String,
    pub channels: usize,
    /// Spatial size relative to the graph input (an integer upscaling factor).
    pub scale: u32,
}

/// One operation producing one value.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

impl Node {
    /// Every value the node reads: its inputs and its epilogue's residual.
    pub fn reads(&self) -> Vec<ValueId> {
        let mut r = self.inputs.clone();
        if let Op::Conv(c) = &self.op {
            r.extend(c.epilogue.residual());
        }
        r
    }
}

/// The operations the engine runs.
#[derive(Debug, Clone)]
pub enum Op {
    Conv(Conv),
    /// `inputs[0] (op) rhs`; a tensor right-hand side is `inputs[1]`.
    Binary {
        kind: BinaryKind,
        rhs: Rhs,
    },
    /// A standalone activation (unfused).
    Act(Activation),
    /// Channel concatenation of all inputs: any number when every input has a multiple of 4
    /// channels (whole channel groups are copied), else at most [`MAX_CONCAT_INPUTS`] (the
    /// loader chains longer ones).
    Concat,
    /// Depth to space (ncnn mode 0 = PyTorch `PixelShuffle`).
    PixelShuffle {
        factor: u32,
    },
    /// Nearest-neighbour upscaling by an integer factor.
    InterpNearest {
        factor: u32,
    },
    /// RefER's alignment (RefQSR, Eqs. 4-7): `inputs[0] - warp(inputs[1])`, the reference
    /// feature `inputs[1]` backward-warped onto the query feature `inputs[0]` by the argmax of
    /// their cost volume over 3x3-pooled, L2-normalised codes of `bits` bits clipped to
    /// `[-clip, clip]`.
    RefEr {
        bits: u32,
        clip: f32,
    },
}

/// The concat kernel binds a fixed number of inputs.
pub const MAX_CONCAT_INPUTS: usize = 4;

/// A 2-D convolution with stride 1 and "same" zero padding, plus its fused epilogue.
#[derive(Debug, Clone)]
pub struct Conv {
    pub in_ch: usize,
    pub out_ch: usize,
    /// Kernel size (1 or 3).
    pub k: usize,
    /// `[out_ch][in_ch][k][k]`, as PyTorch and ncnn store them.
    pub weights: Vec<f32>,
    /// One per output channel (zeros when the model has none).
    pub bias: Vec<f32>,
    pub act: Activation,
    pub epilogue: Epilogue,
}

/// Pointwise activations (applied in a conv epilogue or on their own).
#[derive(Debug, Clone, PartialEq)]
pub enum Activation {
    None,
    Relu,
    Leaky(f32),
    /// One slope per channel.
    PRelu(Vec<f32>),
    Swish,
    Sigmoid,
}

impl Activation {
    /// Code shared with the shaders (`ACT` override constant).
    pub fn code(&self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Relu => 1,
            Activation::Leaky(_) => 2,
            Activation::PRelu(_) => 3,
            Activation::Swish => 4,
            Activation::Sigmoid => 5,
        }
    }
}

/// What a convolution does with its activated accumulator besides storing it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epilogue {
    None,
    /// SPAN's attention: `y = (x + r) * (sigmoid(x) - 0.5)` with `x` the raw conv output.
    SpanGate(ValueId),
    /// Residual add after the activation: `y = act(x) + r`.
    Add(ValueId),
}

impl Epilogue {
    /// Code shared with the shaders (`EPI` override constant).
    pub fn code(&self) -> u32 {
        match self {
            Epilogue::None => 0,
            Epilogue::SpanGate(_) => 1,
            Epilogue::Add(_) => 2,
        }
    }

    pub fn residual(&self) -> Option<ValueId> {
        match *self {
            Epilogue::None => None,
            Epilogue::SpanGate(v) | Epilogue::Add(v) => Some(v),
        }
    }
}

/// Elementwise binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
    /// `b - a`
    RSub,
    Max,
    Min,
}

impl BinaryKind {
    pub fn code(self) -> u32 {
        match self {
            BinaryKind::Add => 0,
            BinaryKind::Sub => 1,
            BinaryKind::Mul => 2,
            BinaryKind::Div => 3,
            BinaryKind::RSub => 4,
            BinaryKind::Max => 5,
            BinaryKind::Min => 6,
        }
    }
}

/// Right-hand side of a binary op.
#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    /// Same-shaped tensor `inputs[1]`.
    Tensor,
    Scalar(f32),
    /// One value per channel, broadcast over the image.
    PerChannel(Vec<f32>),
}

impl Graph {
    /// Load an ncnn model from its `.param` and `.bin` files and fuse it for execution.
    pub fn load_ncnn(param: &Path, bin: &Path) -> Result<Graph> {
        let graph = ncnn::load(param, bin)?;
        Ok(fuse::fuse(graph))
    }

    /// The output's size relative to the input (the upscaling factor).
    pub fn scale(&self) -> u32 {
        self.values[self.output].scale
    }

    /// Channels of the input image the graph expects.
    pub fn input_channels(&self) -> usize {
        self.values[self.input].channels
    }

    /// Receptive-field radius of the output in input pixels: how far an output pixel can see.
    /// Tiles need at least this much halo for tiled output to equal untiled output.
    pub fn receptive_radius(&self) -> usize {
        // Radius in each value's own pixels, then converted back to input pixels.
        let mut r = vec![0usize; self.values.len()];
        for node in &self.nodes {
            let in_scale = self.values[node.inputs[0]].scale as usize;
            let reach = node.reads().iter().map(|&i| r[i]).max().unwrap_or(0);
            let own = match &node.op {
                Op::Conv(c) => c.k / 2,
                _ => 0,
            };
            // own radius is in this node's input pixels = in_scale x graph-input pixels.
            r[node.output] = reach + own.div_ceil(in_scale);
        }
        r[self.output]
    }
}
