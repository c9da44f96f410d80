//! RefQSR (Section 3 of the paper): representative patches run at high precision, every other
//! patch at low precision, refined by RefER from its reference's features.
//!
//! The image is cut into patches ([`PATCH`] pixels with [`HALO`] pixels of overlap each side,
//! the paper's six overlapping pixels, across which neighbouring outputs are blended).
//! ClustBlock ([`clust`]) gives every patch a logit vector; [`select`] picks references by
//! Eqs. 2-3; [`schedule`] orders the work (references first, queries queued against their
//! stored features, groups sized by the memory budget); [`RefQsr::run`] executes it. The
//! reference body runs at (W b_high, A b_high); the query body at (W b_medium, A b_low),
//! b_medium = round((b_high + b_low) / 2), except its first residual block, kept at b_high as
//! the paper keeps it ([`first_block`]); RefER at the tap: `F' = Fq + conv(Fq - warp(Fr))`,
//! the conv at b_high.
//!
//! The tap is the body's output, the input of the upsampler (SPAN has no ResBlocks to replace
//! as the paper does for SRResNet; its body ends in a 1x1 conv over four concatenated block
//! outputs, so the last feature map is where one RefER sees the error of every quantized
//! layer, and it is the only one the float tail reads). RefER is the paper's QConv-ReLU-QConv
//! ([`ReferParams::convs`]), trained by `refqsr calibrate` for each mode against the fp32
//! output ([`crate::quant::refer`]), then scaled by the gain that measures best at the output
//! on held-out images ([`ReferParams::gain`]; a mode whose RefER does not pay runs without it).
//! Files from before the training hold one 1x1 conv, fitted in closed form; they still load.

pub mod clust;
pub mod fit;
pub mod schedule;
pub mod select;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use image::Rgb32FImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exec::{GpuModel, Plan};
use crate::gpu::Context;
use crate::kernels::int_conv::PackedIntConv;
use crate::model::{Activation, Conv, Epilogue, Graph, Node, Op, Value, ValueId};
use crate::profile::{Profiler, Stage};
use crate::quant::accounting::cost_with;
use crate::quant::{Bounds, Calibration, Mode, Quantizer};
use crate::tile::{Feathered, Grid};

use clust::{ClustBlock, ClustParams};
use schedule::{Budget, Schedule};
use select::Selection;

/// Patch size (input pixels), the size the paper trains with.
pub const PATCH: usize = 48;
/// Overlap each side of a patch: the paper's six overlapping pixels between patches.
pub const HALO: usize = 3;
/// Default cosine threshold (the paper's).
pub const DEFAULT_TAU: f32 = 0.5;
/// Patches per dispatch at most.
pub const MAX_GROUP: usize = 16;
/// Format tag of the fitted parameters file.
pub const FORMAT: &str = "refqsr-params-1";

/// The paper's ablations (Table 5), for `eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Ablation {
    #[default]
    None,
    /// Queries at low precision with no refinement.
    NoRefer,
    /// The query's own feature as its reference.
    SelfReference,
    /// The same references, each query paired with a random one.
    RandomReferences,
}

impl Ablation {
    pub const ALL: [Ablation; 3] = [
        Ablation::NoRefer,
        Ablation::SelfReference,
        Ablation::RandomReferences,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Ablation::None => "",
            Ablation::NoRefer => "w/o RefER",
            Ablation::SelfReference => "self-reference",
            Ablation::RandomReferences => "random references",
        }
    }
}

/// One convolution of RefER: `k` x `k`, "same" padding, its input quantized at b_high over
/// `input` (a per-tensor range that contains 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferConv {
    pub k: usize,
    pub in_ch: usize,
    pub out_ch: usize,
    /// Quantization bounds of the conv's input (the first conv's is the difference
    /// `Fq - warp(Fr)`).
    pub input: [f32; 2],
    /// `[out][in][k][k]`.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// RefER fitted for one mode: `F' = Fq + gain * convs(Fq - warp(Fr))`, the convs chained with
/// a ReLU between them (the paper's QConv-ReLU-QConv block at b_high).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ReferFile")]
pub struct ReferParams {
    /// The mode, e.g. `refqsr:8-4`.
    pub mode: String,
    /// Clip of the pooled, normalised features before their `b_low` codes.
    pub clip: f32,
    /// The convolutions, in order; the last one's output is added to the query's feature.
    pub convs: Vec<ReferConv>,
    /// How much of the fitted correction is applied (the last conv's weights and bias are
    /// scaled by it), as judged by `refqsr calibrate` on held-out query patches at the
    /// network's output; 0 turns RefER off for the mode (the queries then run without it and
    /// cost nothing for it). Files from before the judgement apply the whole fit.
    pub gain: f32,
}

/// `ReferParams` as files hold it: `convs`, or (files written before RefER was trained) one
/// 1x1 conv as `input`, `weights` and `bias`.
#[derive(Deserialize)]
struct ReferFile {
    mode: String,
    clip: f32,
    #[serde(default)]
    convs: Vec<ReferConv>,
    input: Option<[f32; 2]>,
    #[serde(default)]
    weights: Vec<f32>,
    #[serde(default)]
    bias: Vec<f32>,
    #[serde(default = "full_gain")]
    gain: f32,
}

impl From<ReferFile> for ReferParams {
    fn from(f: ReferFile) -> Self {
        let mut convs = f.convs;
        if let (true, Some(input)) = (convs.is_empty(), f.input) {
            let c = f.bias.len();
            convs.push(ReferConv {
                k: 1,
                in_ch: c,
                out_ch: c,
                input,
                weights: f.weights,
                bias: f.bias,
            });
        }
        ReferParams {
            mode: f.mode,
            clip: f.clip,
            convs,
            gain: f.gain,
        }
    }
}

impl ReferParams {
    /// Multiply-accumulates of the convs per pixel.
    pub fn macs_per_pixel(&self) -> usize {
        self.convs
            .iter()
            .map(|c| c.k * c.k * c.in_ch * c.out_ch)
            .sum()
    }
}

fn full_gain() -> f32 {
    1.0
}

/// The gains `refqsr calibrate` tries for RefER's correction: none, a part, or all of it.
pub const GAINS: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// Everything `refqsr calibrate` fits for RefQSR on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub format: String,
    pub model: String,
    pub clust: ClustParams,
    pub refer: Vec<ReferParams>,
}

impl Params {
    /// Parse and check parameters for `graph` (`origin` names the file in errors).
    pub fn parse(text: &str, origin: &Path, graph: &Graph) -> Result<Params> {
        let bad = |m: String| Error::Invalid(format!("{}: {m}", origin.display()));
        let p: Params =
            serde_json::from_str(text).map_err(|e| bad(format!("not RefQSR parameters: {e}")))?;
        if p.format != FORMAT {
            return Err(bad(format!("format `{}`, expected `{FORMAT}`", p.format)));
        }
        if p.model != graph.name {
            return Err(bad(format!(
                "fitted for model `{}`, not `{}`",
                p.model, graph.name
            )));
        }
        let c = graph.values[tap(graph)?].channels;
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        for (k, r) in p.refer.iter().enumerate() {
            let field = |f: &str| format!("refer[{k}] ({}).{f}", r.mode);
            if !matches!(r.mode.parse::<Mode>(), Ok(Mode::RefQsr { .. })) {
                return Err(bad(format!("{}: not a RefQSR mode", field("mode"))));
            }
            check_convs(&r.convs, c).map_err(|m| bad(format!("{}{m}", field("convs"))))?;
            if !(r.clip.is_finite() && r.clip > 0.0) {
                return Err(bad(format!(
                    "{} = {}: must be a positive number",
                    field("clip"),
                    r.clip
                )));
            }
            if !(r.gain.is_finite() && (0.0..=1.0).contains(&r.gain)) {
                return Err(bad(format!(
                    "{} = {}: must be a number from 0 to 1",
                    field("gain"),
                    r.gain
                )));
            }
        }
        let [r2, r3] = p.clust.ranges;
        if !(r2.is_finite() && r3.is_finite() && r2 > 0.0 && r3 > 0.0) {
            return Err(bad(format!(
                "clust.ranges = [{r2}, {r3}]: must be positive numbers"
            )));
        }
        if p.clust.prototypes.is_empty()
            || p.clust
                .prototypes
                .iter()
                .any(|v| v.len() != clust::FEATURES || !finite(v))
        {
            return Err(bad(format!(
                "clust.prototypes: needs at least one vector of {} finite values",
                clust::FEATURES
            )));
        }
        Ok(p)
    }

    pub fn load(path: &Path, graph: &Graph) -> Result<Params> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, graph)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("params serialize");
        crate::imageio::atomic_write(path, |w| {
            std::io::Write::write_all(w, text.as_bytes()).map_err(|e| Error::io(path, e))
        })
    }

    /// The RefER fit of `mode`.
    pub fn refer(&self, mode: Mode) -> Option<&ReferParams> {
        let name = mode.to_string();
        self.refer.iter().find(|r| r.mode == name)
    }
}

/// What is wrong with RefER's `convs` for a tap of `c` channels (the message follows the
/// field's name).
fn check_convs(convs: &[ReferConv], c: usize) -> std::result::Result<(), String> {
    if convs.is_empty() {
        return Err(": needs at least one convolution".into());
    }
    let mut from = c;
    for (i, cv) in convs.iter().enumerate() {
        let at = |f: &str| format!("[{i}].{f}");
        if cv.in_ch != from {
            return Err(format!(
                "{} = {}: must be {from} (the tap's channels or the previous conv's outputs)",
                at("in_ch"),
                cv.in_ch
            ));
        }
        if cv.k % 2 == 0 || cv.k > 7 || cv.out_ch == 0 {
            return Err(format!(
                "{}: a {}x{} conv to {} channels; needs an odd size up to 7 and outputs",
                at("k"),
                cv.k,
                cv.k,
                cv.out_ch
            ));
        }
        let want = cv.out_ch * cv.in_ch * cv.k * cv.k;
        if cv.weights.len() != want || cv.bias.len() != cv.out_ch {
            return Err(format!(
                "{} / {}: needs {want} weights and {} biases, has {} and {}",
                at("weights"),
                at("bias"),
                cv.out_ch,
                cv.weights.len(),
                cv.bias.len()
            ));
        }
        if !cv.weights.iter().chain(&cv.bias).all(|x| x.is_finite()) {
            return Err(format!("{}: values must be finite", at("weights")));
        }
        let [lo, hi] = cv.input;
        if !(lo.is_finite() && hi.is_finite() && lo <= 0.0 && hi >= 0.0 && hi > lo) {
            return Err(format!(
                "{} = [{lo}, {hi}]: must be finite, ordered, of non-zero width and contain 0",
                at("input")
            ));
        }
        from = cv.out_ch;
    }
    if from != c {
        return Err(format!(
            ": the last conv gives {from} channels, the tap has {c}"
        ));
    }
    Ok(())
}

/// The weight bits of queries: round((high + low) / 2), halves up.
pub fn medium(high: u32, low: u32) -> u32 {
    (high + low).div_ceil(2)
}

/// The body convolutions (indices into [`crate::quant::body_convs`]) of `g`'s first residual
/// block: up to the first whose epilogue adds back an earlier value (SPAN's gate, a residual
/// add), or the first alone where none does. The paper keeps this block at b_high in queries
/// as in references (Section 3): every later layer builds on its features.
pub fn first_block(g: &Graph) -> std::ops::Range<usize> {
    let body = crate::quant::body_convs(g);
    let end = body
        .iter()
        .position(|&j| matches!(&g.nodes[j].op, Op::Conv(c) if c.epilogue.residual().is_some()))
        .unwrap_or(0);
    0..(end + 1).min(body.len())
}

/// The per-layer spec of queries in mode `high`-`low`, as a calibration: `calib`, with the
/// first block's floors raised to `high` (see [`first_block`]; float layers stay float), and
/// the queries' own steps and clips, where reconstruction learned them, in place of the
/// shared ones.
pub fn query_calibration(g: &Graph, calib: &Calibration, high: u32) -> Calibration {
    let mut q = calib.clone();
    for l in &mut q.layers {
        let steps = std::mem::take(&mut l.query_channels);
        l.channels.extend(steps);
        let clips = std::mem::take(&mut l.query_weight_clip);
        l.weight_clip.extend(clips);
    }
    for l in &mut q.layers[first_block(g)] {
        let [w, a] = l.floor.unwrap_or([0, 0]);
        if w != crate::quant::calib::FLOAT {
            l.floor = Some([w.max(high), a.max(high)]);
        }
    }
    q
}

/// The integer layers of the query model in mode `high`-`low`: weights at b_medium,
/// activations at b_low, the first block at b_high, each raised to its floor.
pub fn query_layers(
    g: &Graph,
    calib: &Calibration,
    (high, low): (u32, u32),
    bounds: Bounds,
) -> std::collections::BTreeMap<usize, PackedIntConv> {
    let mode = Mode::Uniform {
        w: medium(high, low),
        a: low,
    };
    crate::quant::int_layers(g, mode, &query_calibration(g, calib, high), bounds)
}

/// The RefER tap of `g`: the input of its last convolution (the tail).
pub fn tap(g: &Graph) -> Result<ValueId> {
    g.nodes
        .iter()
        .rev()
        .find_map(|n| match &n.op {
            Op::Conv(_) => Some(n.inputs[0]),
            _ => None,
        })
        .filter(|&v| v != g.input)
        .ok_or_else(|| Error::Unsupported {
            model: g.name.clone(),
            message: "has no body before its last convolution for RefER to refine".into(),
        })
}

/// `g` with RefER at `tap`: `RefEr` (inputs: the tap and the reference feature, an external
/// value, or the tap itself for self-reference) and its convs ([`refer_convs`]), the last with
/// the tap as residual; later nodes read the refined feature. Returns the graph, the
/// reference value (external) and the index of the first inserted node (the convs follow it).
pub fn query_graph(
    g: &Graph,
    tap: ValueId,
    refer: &ReferParams,
    bits: u32,
    self_reference: bool,
) -> (Graph, Option<ValueId>, usize) {
    let mut q = g.clone();
    let c = g.values[tap].channels;
    let scale = g.values[tap].scale;
    let mut value = |name: &str, channels: usize| {
        q.values.push(Value {
            name: name.into(),
            channels,
            scale,
        });
        q.values.len() - 1
    };
    let fr = (!self_reference).then(|| value("refer_reference", c));
    let diff = value("refer_difference", c);
    let convs = refer_convs(refer, tap);
    let outs: Vec<ValueId> = (0..convs.len())
        .map(|i| match i + 1 == convs.len() {
            true => value("refer_refined", c),
            false => value(&format!("refer_hidden_{i}"), convs[i].out_ch),
        })
        .collect();
    let refined = *outs.last().expect("RefER has a conv");
    let at = g
        .nodes
        .iter()
        .position(|n| n.output == tap)
        .expect("the tap is computed")
        + 1;
    for n in &mut q.nodes[at..] {
        for v in &mut n.inputs {
            if *v == tap {
                *v = refined;
            }
        }
        if let Op::Conv(cv) = &mut n.op {
            cv.epilogue = match cv.epilogue {
                Epilogue::Add(v) if v == tap => Epilogue::Add(refined),
                Epilogue::SpanGate(v) if v == tap => Epilogue::SpanGate(refined),
                e => e,
            };
        }
    }
    let mut nodes = vec![Node {
        name: "refer_align".into(),
        op: Op::RefEr {
            bits,
            clip: refer.clip,
        },
        inputs: vec![tap, fr.unwrap_or(tap)],
        output: diff,
    }];
    let mut from = diff;
    for (i, (cv, &out)) in convs.into_iter().zip(&outs).enumerate() {
        nodes.push(Node {
            name: format!("refer_conv_{i}"),
            op: Op::Conv(cv),
            inputs: vec![from],
            output: out,
        });
        from = out;
    }
    q.nodes.splice(at..at, nodes);
    (q, fr, at)
}

/// RefER's convs as graph convolutions: a ReLU after each but the last, whose output (scaled
/// by the gain) is added to `residual`.
fn refer_convs(r: &ReferParams, residual: ValueId) -> Vec<Conv> {
    let n = r.convs.len();
    r.convs
        .iter()
        .enumerate()
        .map(|(i, cv)| {
            let last = i + 1 == n;
            let gain = if last { r.gain } else { 1.0 };
            Conv {
                in_ch: cv.in_ch,
                out_ch: cv.out_ch,
                k: cv.k,
                weights: cv.weights.iter().map(|w| w * gain).collect(),
                bias: cv.bias.iter().map(|b| b * gain).collect(),
                act: if last {
                    Activation::None
                } else {
                    Activation::Relu
                },
                epilogue: if last {
                    Epilogue::Add(residual)
                } else {
                    Epilogue::None
                },
            }
        })
        .collect()
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub patches: usize,
    pub references: usize,
    /// ClustBlock, 10^9 BitOPs.
    pub clust_bitops_g: f64,
    /// Whole network (all patches, RefER included), 10^9 BitOPs.
    pub bitops_g: f64,
    /// Quantized body and RefER, 10^9 BitOPs.
    pub bitops_body_g: f64,
    /// Mean body activation bits over the patches.
    pub fqr: f64,
    /// Host wall time (ms) of the stages: clustering (with selection), references, queries.
    pub stage_ms: [f64; 3],
    pub waves: usize,
    pub group: usize,
    pub peak_bytes: u64,
}

/// A cached plan: (query model?, batch, height, width).
type PlanKey = (bool, usize, usize, usize);

/// The RefQSR engine of one mode: ClustBlock, the query model, and the plans.
pub struct RefQsr {
    pub high: u32,
    pub low: u32,
    clust: ClustBlock,
    query: GpuModel,
    tap: ValueId,
    fr: Option<ValueId>,
    refer: Option<ReferParams>,
    tau: f32,
    ablation: Ablation,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
    last: Mutex<Option<RunStats>>,
    /// Each body layer's precision floor (see [`Calibration::spec`]), for the accounting: the
    /// queries' (the first block's raised to b_high, which references run at anyway).
    floors: Vec<[u32; 2]>,
}

impl RefQsr {
    /// The engine for `Mode::RefQsr { high, low }` on the prepared graph `g`; the reference
    /// model (`w{high}a{high}`) is the caller's.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: Arc<Context>,
        g: &Graph,
        (high, low): (u32, u32),
        calib: &Calibration,
        bounds: Bounds,
        params: &Params,
        tau: f32,
        ablation: Ablation,
    ) -> Result<Self> {
        let mode = Mode::RefQsr { high, low };
        let tap = tap(g)?;
        let layers = query_layers(g, calib, (high, low), bounds);
        // a RefER judged not to pay (gain 0) is left out, as the NoRefer ablation leaves it
        let refer = match ablation {
            Ablation::NoRefer => None,
            _ => Some(params.refer(mode).ok_or_else(|| {
                Error::Invalid(format!(
                    "no RefER fit for {mode} in the parameters of `{}` (fitted: {}): run `refqsr calibrate`",
                    g.name,
                    params.refer.iter().map(|r| r.mode.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?)
            .filter(|r| r.gain > 0.0),
        };
        let (query, fr, refer) = match refer {
            None => (
                GpuModel::quantized(ctx.clone(), g.clone(), layers)?,
                None,
                None,
            ),
            Some(r) => {
                let (qg, fr, at) = query_graph(g, tap, r, low, ablation == Ablation::SelfReference);
                let inserted = 1 + r.convs.len();
                let mut layers: std::collections::BTreeMap<usize, PackedIntConv> = layers
                    .into_iter()
                    .map(|(j, l)| (if j < at { j } else { j + inserted }, l))
                    .collect();
                // RefER's convs as the query graph holds them (the gain applied)
                for (i, p) in r.convs.iter().enumerate() {
                    let Op::Conv(conv) = &qg.nodes[at + 1 + i].op else {
                        unreachable!("query_graph puts RefER's convs after its alignment")
                    };
                    layers.insert(
                        at + 1 + i,
                        PackedIntConv::new(
                            conv,
                            high,
                            Quantizer::new(p.input[0], p.input[1], high),
                        ),
                    );
                }
                (
                    GpuModel::quantized(ctx.clone(), qg, layers)?,
                    fr,
                    Some(r.clone()),
                )
            }
        };
        Ok(RefQsr {
            high,
            low,
            clust: ClustBlock::new(ctx, params.clust.clone())?,
            query,
            tap,
            fr,
            refer,
            tau,
            ablation,
            plans: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
            floors: query_calibration(g, calib, high).spec(0, 0),
        })
    }

    /// What the last [`RefQsr::run`] did.
    pub fn last_run(&self) -> Option<RunStats> {
        self.last.lock().expect("stats").clone()
    }

    /// The references of the windows of `grid` over `img` (after the ablation's pairing).
    pub fn select(
        &self,
        windows: &[f32],
        grid: &Grid,
        prof: Option<&Profiler>,
    ) -> Result<Selection> {
        let (ih, iw) = grid.input_size();
        let n = grid.tiles.len();
        let v = self.clust.logits(windows, n, ih, iw, prof)?;
        let c = self.clust.params.prototypes.len();
        let s = select::select(&v, n, c, self.tau);
        Ok(match self.ablation {
            Ablation::RandomReferences => s.shuffled(n as u64),
            _ => s,
        })
    }

    fn plan(
        &self,
        model: &GpuModel,
        query: bool,
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Arc<Plan>> {
        let mut plans = self.plans.lock().expect("plan cache");
        if let Some(p) = plans.get(&(query, batch, h, w)) {
            return Ok(p.clone());
        }
        if plans.len() >= 8 {
            plans.clear();
        }
        let p = Arc::new(if query {
            model.plan(batch, h, w)?
        } else {
            model.plan_keeping(batch, h, w, &[self.tap])?
        });
        plans.insert((query, batch, h, w), p.clone());
        Ok(p)
    }

    /// Bytes of one reference's tap features in a `h` x `w` window (one store slot).
    fn slot_bytes(&self, h: usize, w: usize) -> u64 {
        (self.query.graph.values[self.tap].channels.div_ceil(4) * h * w * 16) as u64
    }

    /// The schedule of `sel` on windows of `h` x `w` within `max_memory` bytes.
    pub fn schedule(
        &self,
        reference: &GpuModel,
        sel: &Selection,
        h: usize,
        w: usize,
        max_memory: u64,
    ) -> Result<Schedule> {
        let slot = self.slot_bytes(h, w);
        schedule::schedule(
            sel,
            &Budget {
                max_bytes: max_memory,
                slot_bytes: if self.fr.is_some() { slot } else { 0 },
                reference_plan: &|g| reference.memory(g, h, w).1,
                query_plan: &|g| self.query.memory(g, h, w).1,
                max_group: MAX_GROUP,
            },
        )
    }

    /// Upscale `img` cut as `grid`, references by `reference` (the `w{high}a{high}` model whose
    /// graph this engine was built from), measured by `prof` if given.
    pub fn run(
        &self,
        reference: &GpuModel,
        img: &Rgb32FImage,
        grid: &Grid,
        max_memory: u64,
        progress: &mut dyn FnMut(usize, usize),
        prof: Option<&Profiler>,
    ) -> Result<Rgb32FImage> {
        let ctx = &reference.ctx;
        let (ih, iw) = grid.input_size();
        let n = grid.tiles.len();
        let per_in = ih * iw * 4;
        let s = reference.graph.scale() as usize;
        let per_out = per_in * s * s;
        let t0 = std::time::Instant::now();
        let windows = grid.extract_all(img);
        progress(0, n);
        let sel = self.select(&windows, grid, prof)?;
        let plan = self.schedule(reference, &sel, ih, iw, max_memory)?;
        let t1 = std::time::Instant::now();
        let slot = self.slot_bytes(ih, iw);
        // RefQSR's halo is far shorter than the network's reach and neighbours differ in
        // precision: windows are blended across their overlap rather than cut at the core
        let mut out = crate::tile::Feathered::new(grid, s);
        let mut done = 0;
        let (mut ref_ms, mut query_ms) = (0.0, 0.0);
        // gather a group's windows, run them, blend them into the output
        let run_group = |p: &Plan, group: &[schedule::Item], out: &mut Feathered, body| {
            let input: Vec<f32> = group
                .iter()
                .flat_map(|it| {
                    windows[it.patch * per_in..(it.patch + 1) * per_in]
                        .iter()
                        .copied()
                })
                .collect();
            let y = p.run_maybe_profiled(&input, prof, body)?;
            for (it, src) in group.iter().zip(y.chunks(per_out)) {
                out.add(grid.tiles[it.patch], src);
            }
            Ok::<(), Error>(())
        };
        // one slot-sized copy per (from offset, to offset), on the device
        let copy_slots = |from: &wgpu::Buffer,
                          to: &wgpu::Buffer,
                          at: &mut dyn Iterator<Item = (u64, u64)>,
                          stage: Stage| {
            let record = |enc: &mut wgpu::CommandEncoder| {
                for (src, dst) in at {
                    enc.copy_buffer_to_buffer(from, src * slot, to, dst * slot, slot);
                }
            };
            match prof {
                Some(p) => p.submit(ctx, vec![(stage, Box::new(record))]),
                None => {
                    let mut enc = ctx.device.create_command_encoder(&Default::default());
                    record(&mut enc);
                    ctx.submit(enc.finish());
                    Ok(())
                }
            }
        };
        for wave in &plan.waves {
            let store = self.fr.map(|_| ctx.acquire(slot * wave.slots as u64));
            let tr = std::time::Instant::now();
            for group in &wave.references {
                let p = self.plan(reference, false, group.len(), ih, iw)?;
                run_group(&p, group, &mut out, Stage::ReferenceBody)?;
                if let Some(store) = &store {
                    let at = group
                        .iter()
                        .enumerate()
                        .map(|(k, it)| (k as u64, it.slot as u64));
                    copy_slots(
                        p.kept(self.tap),
                        store,
                        &mut at.into_iter(),
                        Stage::ReferenceBody,
                    )?;
                }
                done += group.len();
                progress(done, n);
            }
            let tq = std::time::Instant::now();
            ref_ms += (tq - tr).as_secs_f64() * 1e3;
            for group in &wave.queries {
                let p = self.plan(&self.query, true, group.len(), ih, iw)?;
                if let (Some(store), Some(fr)) = (&store, self.fr) {
                    let at = group
                        .iter()
                        .enumerate()
                        .map(|(k, it)| (it.slot as u64, k as u64));
                    copy_slots(store, p.external(fr), &mut at.into_iter(), Stage::QueryBody)?;
                }
                run_group(&p, group, &mut out, Stage::QueryBody)?;
                done += group.len();
                progress(done, n);
            }
            query_ms += tq.elapsed().as_secs_f64() * 1e3;
            if let Some(store) = store {
                ctx.release(store);
            }
        }
        let stats = self.stats(
            reference,
            &sel,
            &plan,
            ih,
            iw,
            [(t1 - t0).as_secs_f64() * 1e3, ref_ms, query_ms],
        );
        *self.last.lock().expect("stats") = Some(stats);
        Ok(out.finish())
    }

    fn stats(
        &self,
        reference: &GpuModel,
        sel: &Selection,
        plan: &Schedule,
        h: usize,
        w: usize,
        stage_ms: [f64; 3],
    ) -> RunStats {
        let g = &reference.graph;
        let n = sel.reference.len();
        let refs = sel.references().len();
        let qn = n - refs;
        let (hi, lo) = (self.high, self.low);
        let f = &self.floors;
        let r = cost_with(g, Mode::Uniform { w: hi, a: hi }, f, w, h).expect("uniform cost");
        let q = cost_with(
            g,
            Mode::Uniform {
                w: medium(hi, lo),
                a: lo,
            },
            f,
            w,
            h,
        )
        .expect("uniform cost");
        // RefER per query: its convs at b_high and the cost volume at b_low
        let c = g.values[self.tap].channels as f64;
        let cells = crate::exec::refer_cells(h, w) as f64;
        let refer = match &self.refer {
            Some(r) => {
                ((h * w) as f64 * r.macs_per_pixel() as f64 * (hi * hi) as f64
                    + cells * cells * c * (lo * lo) as f64)
                    / 1e9
            }
            None => 0.0,
        };
        let classes = self.clust.params.prototypes.len();
        RunStats {
            patches: n,
            references: refs,
            clust_bitops_g: clust::macs(n, h, w, classes) * 64.0 / 1e9,
            bitops_g: refs as f64 * r.bitops_g + qn as f64 * (q.bitops_g + refer),
            bitops_body_g: refs as f64 * r.bitops_body_g + qn as f64 * (q.bitops_body_g + refer),
            fqr: (refs as f64 * r.fqr + qn as f64 * q.fqr) / n.max(1) as f64,
            stage_ms,
            waves: plan.waves.len(),
            group: plan.group,
            peak_bytes: plan.peak_bytes,
        }
    }
}
