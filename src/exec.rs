//! Running a [`Graph`] on the GPU: weights uploaded once ([`GpuModel`]), and per input shape a
//! [`Plan`] (buffers with liveness-based reuse, bind groups, the recorded launches) that runs
//! any number of batches of that shape.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::kernels::conv::{algorithm, Algorithm, GpuConv, PackedConv};
use crate::kernels::gemm::{GpuGemm, PackedGemm};
use crate::kernels::int_conv::{GpuIntConv, PackedIntConv};
use crate::kernels::winograd::{self, GpuWinograd, PackedWinograd};
use crate::kernels::{self, Dispatch, Step};
use crate::model::{Activation, Conv, Graph, Node, Op, Rhs, ValueId};
use crate::profile::{Profiler, Segment, Stage};

/// A graph whose weights live on the device.
pub struct GpuModel {
    pub ctx: Arc<Context>,
    pub graph: Graph,
    nodes: Vec<NodeRes>,
}

/// Device resources of one node.
enum NodeRes {
    Conv(Box<GpuConv>),
    Gemm(Box<GpuGemm>),
    /// A Winograd convolution, with a direct one to fall back on where its transformed
    /// tensors would be the plan's largest (see [`GpuModel::direct_instead`]).
    Winograd(Box<GpuWinograd>, Option<Box<GpuConv>>),
    /// A convolution computed in integers (quantized modes).
    Int(Box<GpuIntConv>),
    /// A per-channel operand or PReLU slopes.
    Vector(wgpu::Buffer),
    None,
}

impl GpuModel {
    pub fn new(ctx: Arc<Context>, graph: Graph) -> Result<Self> {
        Self::build(ctx, graph, true, BTreeMap::new())
    }

    /// A model whose convolutions listed in `int` (by node index, see
    /// [`crate::quant::int_layers`]) run in integers; the others, and every other op, in f32.
    pub fn quantized(
        ctx: Arc<Context>,
        graph: Graph,
        int: BTreeMap<usize, PackedIntConv>,
    ) -> Result<Self> {
        Self::build(ctx, graph, true, int)
    }

    /// Like [`GpuModel::new`] but with every convolution computed by the direct kernel
    /// (`conv.wgsl`), never by Winograd or gemm: to test and benchmark it.
    pub fn new_direct(ctx: Arc<Context>, graph: Graph) -> Result<Self> {
        Self::build(ctx, graph, false, BTreeMap::new())
    }

    fn build(
        ctx: Arc<Context>,
        graph: Graph,
        allow_fast: bool,
        mut int: BTreeMap<usize, PackedIntConv>,
    ) -> Result<Self> {
        let nodes = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(j, n)| {
                Ok(match &n.op {
                    Op::Conv(_) if int.contains_key(&j) => {
                        NodeRes::Int(Box::new(GpuIntConv::new(&ctx, int.remove(&j).unwrap())?))
                    }
                    Op::Conv(c) => match algorithm(c) {
                        _ if !allow_fast => {
                            NodeRes::Conv(Box::new(GpuConv::new(&ctx, PackedConv::new(c))?))
                        }
                        Algorithm::Winograd => NodeRes::Winograd(
                            Box::new(GpuWinograd::new(&ctx, PackedWinograd::new(c))?),
                            winograd_outgrows_values(&graph, n)
                                .then(|| GpuConv::new(&ctx, PackedConv::new(c)).map(Box::new))
                                .transpose()?,
                        ),
                        Algorithm::Gemm => {
                            NodeRes::Gemm(Box::new(GpuGemm::new(&ctx, PackedGemm::pointwise(c))?))
                        }
                        Algorithm::Direct => {
                            NodeRes::Conv(Box::new(GpuConv::new(&ctx, PackedConv::new(c))?))
                        }
                    },
                    Op::Binary {
                        rhs: Rhs::PerChannel(v),
                        ..
                    } => NodeRes::Vector(
                        ctx.upload("per-channel operand", &kernels::binary::per_channel_vec(v)),
                    ),
                    Op::Act(Activation::PRelu(s)) => {
                        let mut padded = s.clone();
                        padded.resize(s.len().next_multiple_of(4), 0.0);
                        NodeRes::Vector(ctx.upload("prelu slopes", &padded))
                    }
                    _ => NodeRes::None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(GpuModel { ctx, graph, nodes })
    }

    /// Bytes of the largest single buffer and of all buffers alive at once, for `batch` inputs
    /// of `h` x `w`; used to pick tile sizes that fit the device.
    pub fn memory(&self, batch: usize, h: usize, w: usize) -> (u64, u64) {
        let shared = self.shared_inputs(batch, h, w, &[]);
        self.memory_keeping(batch, h, w, &[], &shared)
    }

    /// [`GpuModel::memory`] of the plan that keeps `keep` (see [`GpuModel::plan_keeping`])
    /// and feeds its Winograd convolutions as `shared` says.
    fn memory_keeping(
        &self,
        batch: usize,
        h: usize,
        w: usize,
        keep: &[ValueId],
        shared: &SharedInputs,
    ) -> (u64, u64) {
        let mut sizes = self.value_sizes(batch, h, w);
        for &p in &shared.skipped {
            sizes[self.graph.nodes[p].output] = 0;
        }
        let (sv, sm) = self.scratch(batch, h, w);
        let int = self.int_scratch(batch, h, w);
        let (mut peak, mut live) = (0u64, 0u64);
        let mut last = self.last_uses(shared);
        for &v in keep {
            last[v] = usize::MAX;
        }
        live += sizes[self.graph.input];
        let dying = self.dying(&last, shared);
        for (n, dead) in self.graph.nodes.iter().zip(&dying) {
            live += sizes[n.output];
            peak = peak.max(live);
            for &v in dead {
                live -= sizes[v];
            }
        }
        let refer: u64 = self
            .graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::RefEr { .. }))
            .map(|n| {
                let v = &self.graph.values[n.inputs[0]];
                let s = v.scale as usize;
                refer_scratch(batch, v.channels, h * s, w * s)
                    .iter()
                    .sum::<u64>()
            })
            .sum();
        let externals: u64 = self.externals().iter().map(|&v| sizes[v]).sum();
        let peak = peak + refer + externals;
        let largest = sizes.iter().copied().max().unwrap_or(0).max(sv).max(sm);
        let largest = int.iter().copied().fold(largest, u64::max);
        (largest, peak + sv + sm + int.iter().sum::<u64>())
    }

    /// Values read by some node and produced by none, besides the input: filled from outside
    /// (see [`Plan::run_with`] and [`Plan::external`]).
    pub fn externals(&self) -> Vec<ValueId> {
        let g = &self.graph;
        let produced: std::collections::HashSet<ValueId> =
            g.nodes.iter().map(|n| n.output).collect();
        let mut out = Vec::new();
        for v in g.nodes.iter().flat_map(|n| n.reads()) {
            if v != g.input && !produced.contains(&v) && !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }

    /// Scratch bytes for the integer convolutions (packed input, gathered columns), shared by
    /// all of a plan's integer convolutions; zeros when there are none.
    fn int_scratch(&self, batch: usize, h: usize, w: usize) -> [u64; 2] {
        let g = &self.graph;
        g.nodes
            .iter()
            .zip(&self.nodes)
            .filter_map(|(n, r)| match r {
                NodeRes::Int(ic) => {
                    let s = g.values[n.inputs[0]].scale as usize;
                    let plane = h * s * w * s;
                    let (pw, cw) = ic.packed.scratch_words(batch, plane);
                    // (an unused column buffer still needs a valid binding)
                    Some([pw as u64 * 4, (cw as u64 * 4).max(16)])
                }
                _ => None,
            })
            .fold([0; 2], |a, b| std::array::from_fn(|i| a[i].max(b[i])))
    }

    /// The values that travel packed: written by an integer convolution straight into the
    /// packed input of the one integer convolution that reads them (not as its residual),
    /// and read by nothing else; `keep` and the output stay float. Maps each to its reader.
    fn packed_values(&self, keep: &[ValueId]) -> BTreeMap<ValueId, usize> {
        let g = &self.graph;
        // one entry per read, and the graph output marked as read by usize::MAX
        let readers = crate::model::fuse::users(g.nodes.iter().map(Some), g.output);
        let int = |j: usize| matches!(self.nodes.get(j), Some(NodeRes::Int(_)));
        g.nodes
            .iter()
            .enumerate()
            .filter(|&(j, n)| int(j) && !keep.contains(&n.output))
            .filter_map(|(_, n)| match readers.get(&n.output)?.as_slice() {
                &[r] if int(r) && g.nodes[r].inputs[0] == n.output => Some((n.output, r)),
                _ => None,
            })
            .collect()
    }

    /// Scratch bytes for the Winograd transforms (input side, output side), shared by all
    /// convolutions of a plan.
    fn scratch(&self, batch: usize, h: usize, w: usize) -> (u64, u64) {
        let g = &self.graph;
        g.nodes
            .iter()
            .zip(&self.nodes)
            .enumerate()
            .filter_map(|(j, (n, r))| match (&n.op, r) {
                (Op::Conv(c), NodeRes::Winograd(..)) if !self.direct_instead(j, batch, h, w) => {
                    Some(winograd_scratch(g, n, c, batch, h, w))
                }
                _ => None,
            })
            .fold((0, 0), |(a, b), (v, m)| (a.max(v), b.max(m)))
    }

    /// Whether node `j`, a Winograd convolution, runs its direct fallback for this size: where
    /// its transformed tensors would not fit one binding. realesrgan-x4plus's convolutions at
    /// 4x (64 channels) are such: their Winograd scratch capped its windows at 96x96 on
    /// lavapipe's 128 MiB bindings, 16 windows for a 256x256 image; computed directly they
    /// allow 4 windows of 144x144, which redo far less halo and launch 4x fewer kernels.
    fn direct_instead(&self, j: usize, batch: usize, h: usize, w: usize) -> bool {
        let g = &self.graph;
        match (&g.nodes[j].op, &self.nodes[j]) {
            (Op::Conv(c), NodeRes::Winograd(_, Some(_))) => {
                let (v, m) = winograd_scratch(g, &g.nodes[j], c, batch, h, w);
                v.max(m) > self.ctx.max_binding()
            }
            _ => false,
        }
    }

    fn value_sizes(&self, batch: usize, h: usize, w: usize) -> Vec<u64> {
        self.graph
            .values
            .iter()
            .map(|v| {
                let s = v.scale as usize;
                (batch * v.channels.div_ceil(4) * h * s * w * s * 16) as u64
            })
            .collect()
    }

    /// Index of the last node reading each value (`usize::MAX` for the graph output), the
    /// reads of shared Winograd inputs included.
    fn last_uses(&self, shared: &SharedInputs) -> Vec<usize> {
        let mut last = vec![0usize; self.graph.values.len()];
        for (j, n) in self.graph.nodes.iter().enumerate() {
            for v in n.reads() {
                last[v] = j;
            }
        }
        for &(v, j) in &shared.late_reads {
            last[v] = last[v].max(j);
        }
        last[self.graph.output] = usize::MAX;
        last
    }

    /// The values each node reads for the last time (each once), given [`GpuModel::last_uses`].
    fn dying(&self, last: &[usize], shared: &SharedInputs) -> Vec<Vec<ValueId>> {
        let mut out: Vec<Vec<ValueId>> = self
            .graph
            .nodes
            .iter()
            .enumerate()
            .map(|(j, n)| n.reads().into_iter().filter(|&v| last[v] == j).collect())
            .collect();
        for &(v, j) in &shared.late_reads {
            if last[v] == j {
                out[j].push(v);
            }
        }
        for d in &mut out {
            d.sort_unstable();
            d.dedup();
        }
        out
    }

    /// The profile stage of each node: the last convolution and what follows it are the tail,
    /// a convolution of RefER's aligned difference is RefER's conv, the rest is the body.
    fn node_stages(&self) -> Vec<Stage> {
        let g = &self.graph;
        let tail_from = g
            .nodes
            .iter()
            .rposition(|n| matches!(n.op, Op::Conv(_)))
            .unwrap_or(g.nodes.len());
        // RefER's values: the aligned difference and its convs' hidden features (the last
        // conv adds the tap back, and what reads its output is the network again)
        let mut refer_values = std::collections::BTreeSet::new();
        g.nodes
            .iter()
            .enumerate()
            .map(|(j, n)| match &n.op {
                Op::RefEr { .. } => {
                    refer_values.insert(n.output);
                    Stage::Body
                }
                Op::Conv(c) if refer_values.contains(&n.inputs[0]) => {
                    if c.epilogue.residual().is_none() {
                        refer_values.insert(n.output);
                    }
                    Stage::ReferConv
                }
                _ if j >= tail_from => Stage::Tail,
                _ => Stage::Body,
            })
            .collect()
    }

    /// Build the plan for `batch` inputs of `h` x `w`.
    pub fn plan(&self, batch: usize, h: usize, w: usize) -> Result<Plan> {
        self.plan_keeping(batch, h, w, &[])
    }

    /// [`GpuModel::plan`] where the values in `keep` are never overwritten, so that
    /// [`Plan::read_value`] can read them after a run (calibration reads the convolutions'
    /// inputs this way).
    pub fn plan_keeping(&self, batch: usize, h: usize, w: usize, keep: &[ValueId]) -> Result<Plan> {
        let ctx = &self.ctx;
        let g = &self.graph;
        let sizes = self.value_sizes(batch, h, w);
        let shared = self.shared_inputs(batch, h, w, keep);
        let (largest, peak_bytes) = self.memory_keeping(batch, h, w, keep, &shared);
        if largest > ctx.max_binding() {
            return Err(Error::Invalid(format!(
                "a {batch}x{h}x{w} tile needs a {} MiB tensor, over this adapter's {} MiB binding limit: use a smaller tile",
                largest >> 20,
                ctx.max_binding() >> 20
            )));
        }
        let last = self.last_uses(&shared);
        let mut buffers: Vec<Option<Arc<wgpu::Buffer>>> = vec![None; g.values.len()];
        let mut free: Vec<Arc<wgpu::Buffer>> = Vec::new();
        let mut owned: Vec<Arc<wgpu::Buffer>> = Vec::new();
        let take =
            |size: u64, owned: &mut Vec<Arc<wgpu::Buffer>>, free: &mut Vec<Arc<wgpu::Buffer>>| {
                if let Some(i) = free
                    .iter()
                    .position(|b| b.size() >= size && b.size() <= size.saturating_mul(2))
                {
                    return free.swap_remove(i);
                }
                let b = Arc::new(ctx.acquire(size));
                owned.push(b.clone());
                b
            };
        buffers[g.input] = Some(take(sizes[g.input], &mut owned, &mut free));
        // Values read but produced by no node are external inputs, filled by `run_with`.
        let mut externals = Vec::new();
        for v in self.externals() {
            buffers[v] = Some(take(sizes[v], &mut owned, &mut free));
            externals.push((v, sizes[v]));
        }
        let mut last = last;
        for &(v, _) in &externals {
            last[v] = usize::MAX;
        }
        for &v in keep {
            last[v] = usize::MAX;
        }
        let (sv, sm) = self.scratch(batch, h, w);
        let scratch = (sv > 0).then(|| {
            (
                take(sv, &mut owned, &mut Vec::new()),
                take(sm, &mut owned, &mut Vec::new()),
            )
        });
        let int_sizes = self.int_scratch(batch, h, w);
        let int_scratch = (int_sizes[0] > 0)
            .then(|| int_sizes.map(|size| take(size, &mut owned, &mut Vec::new())));
        let packed = self.packed_values(keep);
        let mut steps: Vec<Step> = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        let node_stages = self.node_stages();
        let b = batch as u32;
        let dying = self.dying(&last, &shared);
        let transform = ctx.pipeline("winograd_input", &[])?;
        for (j, node) in g.nodes.iter().enumerate() {
            let release = |free: &mut Vec<Arc<wgpu::Buffer>>,
                           buffers: &[Option<Arc<wgpu::Buffer>>]| {
                for &v in &dying[j] {
                    free.extend(buffers[v].clone());
                }
            };
            if shared.skipped.contains(&j) {
                release(&mut free, &buffers);
                continue;
            }
            let out = take(sizes[node.output], &mut owned, &mut free);
            let buf = |v: ValueId| buffers[v].clone().expect("value computed before use");
            // (the input of a convolution over a skipped concatenation is never built: it
            // reads the parts, see `SharedInputs`)
            let x = buffers[node.inputs[0]]
                .clone()
                .unwrap_or_else(|| Arc::new(ctx.dummy().clone()));
            let xv = &g.values[node.inputs[0]];
            let s = xv.scale;
            let (ih, iw) = (h as u32 * s, w as u32 * s);
            let label = &node.name;
            let launches: Vec<Dispatch> = match (&node.op, &self.nodes[j]) {
                (Op::Conv(c), NodeRes::Conv(gc)) => {
                    let r = c.epilogue.residual().map(buf);
                    gc.dispatch(ctx, label, &x, r.as_deref(), &out, b, ih, iw)
                }
                (Op::Binary { kind, rhs }, res) => {
                    let operand = match (rhs, res) {
                        (Rhs::Tensor, _) => Some(buf(node.inputs[1])),
                        (_, NodeRes::Vector(v)) => Some(Arc::new(v.clone())),
                        _ => None,
                    };
                    vec![kernels::binary::dispatch(
                        ctx,
                        label,
                        *kind,
                        rhs,
                        &x,
                        operand.as_deref(),
                        &out,
                        b,
                        xv.channels as u32,
                        ih * iw,
                    )?]
                }
                (Op::Act(a), res) => {
                    let slopes = match res {
                        NodeRes::Vector(v) => Some(v),
                        _ => None,
                    };
                    vec![kernels::unary::dispatch(
                        ctx,
                        label,
                        a,
                        &x,
                        slopes,
                        &out,
                        b,
                        xv.channels as u32,
                        ih * iw,
                    )?]
                }
                (Op::Concat, _) if node.inputs.iter().all(|&v| g.values[v].channels % 4 == 0) => {
                    // Whole channel groups: per batch item each input is one contiguous run.
                    let plane = (ih * iw) as u64 * 16;
                    let out_groups = (g.values[node.output].channels / 4) as u64;
                    let mut off = 0u64;
                    for &v in &node.inputs {
                        let groups = (g.values[v].channels / 4) as u64;
                        for n in 0..batch as u64 {
                            steps.push(Step::Copy(kernels::Copy {
                                label: label.clone(),
                                src: (*buf(v)).clone(),
                                src_offset: n * groups * plane,
                                dst: (*out).clone(),
                                dst_offset: (n * out_groups + off) * plane,
                                size: groups * plane,
                            }));
                        }
                        off += groups;
                    }
                    Vec::new()
                }
                (Op::Concat, _) => {
                    let ins: Vec<(Arc<wgpu::Buffer>, u32)> = node
                        .inputs
                        .iter()
                        .map(|&v| (buf(v), g.values[v].channels as u32))
                        .collect();
                    let refs: Vec<(&wgpu::Buffer, u32)> =
                        ins.iter().map(|(b, c)| (b.as_ref(), *c)).collect();
                    vec![kernels::concat::dispatch(
                        ctx,
                        label,
                        &refs,
                        &out,
                        b,
                        ih * iw,
                    )?]
                }
                (Op::PixelShuffle { factor }, _) => vec![kernels::pixel_shuffle::dispatch(
                    ctx,
                    label,
                    &x,
                    &out,
                    b,
                    g.values[node.output].channels as u32,
                    ih,
                    iw,
                    *factor,
                )?],
                (Op::InterpNearest { factor }, _) => vec![kernels::interp::dispatch(
                    ctx,
                    label,
                    &x,
                    &out,
                    b,
                    xv.channels as u32,
                    ih,
                    iw,
                    *factor,
                )?],
                (Op::RefEr { bits, clip }, _) => {
                    let (ch, hh, ww) = (xv.channels as u32, ih, iw);
                    let cells = refer_cells(ih as usize, iw as usize) as u32;
                    let groups = ch.div_ceil(4);
                    let [codes_q, codes_r, cost, best] =
                        refer_scratch(batch, xv.channels, ih as usize, iw as usize)
                            .map(|size| take(size, &mut owned, &mut Vec::new()));
                    let fr = buf(node.inputs[1]);
                    vec![
                        kernels::refer_prep::dispatch(
                            ctx, label, &x, &codes_q, b, ch, hh, ww, *bits, *clip,
                        )?,
                        kernels::refer_prep::dispatch(
                            ctx, label, &fr, &codes_r, b, ch, hh, ww, *bits, *clip,
                        )?,
                        kernels::cost_volume::dispatch(
                            ctx, label, &codes_q, &codes_r, &cost, b, cells, groups,
                        )?,
                        kernels::argmax::dispatch(ctx, label, &cost, &best, b, cells)?,
                        kernels::warp::dispatch(ctx, label, &x, &fr, &best, &out, b, ch, hh, ww)?,
                    ]
                }
                (Op::Conv(c), NodeRes::Gemm(gg)) => {
                    let r = c.epilogue.residual().map(buf);
                    gg.dispatch(
                        ctx,
                        label,
                        &x,
                        gg.packed.icg as u32,
                        r.as_deref(),
                        &out,
                        b,
                        ih * iw,
                    )?
                }
                (Op::Conv(c), NodeRes::Winograd(_, Some(gc)))
                    if self.direct_instead(j, batch, h, w) =>
                {
                    let r = c.epilogue.residual().map(buf);
                    gc.dispatch(ctx, label, &x, r.as_deref(), &out, b, ih, iw)
                }
                (Op::Conv(c), NodeRes::Winograd(gw, _)) => {
                    let r = c.epilogue.residual().map(buf);
                    let (v, m) = scratch.as_ref().expect("scratch for winograd convolutions");
                    let (parts, vgroups) = &shared.at[&j];
                    let mut launches: Vec<Dispatch> = parts
                        .iter()
                        .map(|&(p, slot)| {
                            let groups = g.values[p].channels.div_ceil(4) as u32;
                            let label = format!("{label}: {}", g.values[p].name);
                            winograd::transform(
                                ctx,
                                &label,
                                &transform,
                                &buf(p),
                                groups,
                                v,
                                slot,
                                b,
                                ih,
                                iw,
                            )
                        })
                        .collect();
                    launches.extend(gw.product(
                        ctx,
                        label,
                        v,
                        *vgroups,
                        r.as_deref(),
                        &out,
                        m,
                        b,
                        ih,
                        iw,
                    )?);
                    launches
                }
                (Op::Conv(c), NodeRes::Int(ic)) => {
                    use kernels::int_conv::{IntInput, IntOutput};
                    let r = c.epilogue.residual().map(buf);
                    let [scratch_in, cols] = int_scratch
                        .as_ref()
                        .expect("scratch for integer convolutions");
                    let input = if packed.contains_key(&node.inputs[0]) {
                        IntInput::Packed(&x)
                    } else {
                        IntInput::Float(&x)
                    };
                    let output = match packed.get(&node.output).map(|&r| &self.nodes[r]) {
                        Some(NodeRes::Int(next)) => IntOutput::Packed(&out, &next.packed),
                        _ => IntOutput::Float(&out),
                    };
                    ic.dispatch(
                        ctx,
                        label,
                        input,
                        r.as_deref(),
                        output,
                        [scratch_in, cols],
                        b,
                        ih,
                        iw,
                    )?
                }
                (Op::Conv(_), _) => unreachable!("conv nodes have conv resources"),
            };
            steps.extend(launches.into_iter().map(Step::Launch));
            match node.op {
                Op::RefEr { .. } => stages.extend(REFER_STAGES),
                _ => stages.resize(steps.len(), node_stages[j]),
            }
            debug_assert_eq!(stages.len(), steps.len(), "{label}: one stage per step");
            buffers[node.output] = Some(out);
            release(&mut free, &buffers);
        }
        let output = buffers[g.output].clone().expect("output computed");
        let out_v = &g.values[g.output];
        let s = out_v.scale as usize;
        Ok(Plan {
            ctx: self.ctx.clone(),
            batch,
            h,
            w,
            in_channels: g.values[g.input].channels,
            out_channels: out_v.channels,
            scale: s,
            input: buffers[g.input].clone().expect("input buffer"),
            input_bytes: sizes[g.input],
            kept: keep
                .iter()
                .map(|&v| {
                    (
                        v,
                        buffers[v].clone().expect("kept value computed"),
                        sizes[v],
                    )
                })
                .collect(),
            externals: externals
                .into_iter()
                .map(|(v, size)| (v, buffers[v].clone().expect("external buffer"), size))
                .collect(),
            output,
            output_bytes: sizes[g.output],
            steps,
            stages,
            owned,
            peak_bytes,
        })
    }
}

/// The stages of RefER's five launches, in the order the `Op::RefEr` arm records them.
const REFER_STAGES: [Stage; 5] = [
    Stage::ReferPrep,
    Stage::ReferPrep,
    Stage::CostVolume,
    Stage::Argmax,
    Stage::Warp,
];

/// How a plan feeds its Winograd convolutions (those that bind the V scratch). Convolutions in a
/// row whose inputs are concatenations of a growing list of values, as in an RRDB dense block
/// (`conv(x)`, `conv(cat(x, x1))`, ..., `conv(cat(x, x1, x2, x3, x4))`), share one V: each
/// value is transformed once into its own slice of channel groups, and each product reads the
/// prefix it needs. The concatenations are never built. realesrgan-x4plus transformed 640
/// channels per dense block before, 192 now.
#[derive(Default)]
struct SharedInputs {
    /// Per Winograd convolution: the values to transform into V before its product (with
    /// their slots), and the channel groups of a V row.
    at: BTreeMap<usize, (Vec<(ValueId, winograd::Slot)>, u32)>,
    /// Concatenations not run: all their readers take the parts from a shared V.
    skipped: std::collections::BTreeSet<usize>,
    /// Values read later than their last reader in the graph: by the convolution that
    /// transforms them, in place of the skipped concatenation. (value, node)
    late_reads: Vec<(ValueId, usize)>,
}

impl GpuModel {
    /// The [`SharedInputs`] of a plan for `batch` inputs of `h` x `w` keeping `keep`.
    fn shared_inputs(&self, batch: usize, h: usize, w: usize, keep: &[ValueId]) -> SharedInputs {
        let g = &self.graph;
        let uses = crate::model::fuse::users(g.nodes.iter().map(Some), g.output);
        let producer: std::collections::HashMap<ValueId, usize> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(j, n)| (n.output, j))
            .collect();
        let uses_v = |j: usize| {
            matches!(self.nodes[j], NodeRes::Winograd(..)) && !self.direct_instead(j, batch, h, w)
        };
        // A concatenation of whole channel groups read only as the input of such convolutions
        // need not exist: they can read its parts.
        let skippable = |p: usize| {
            let n = &g.nodes[p];
            let u = n.output;
            matches!(n.op, Op::Concat)
                && !keep.contains(&u)
                && n.inputs.iter().all(|&v| g.values[v].channels % 4 == 0)
                && uses.get(&u).is_some_and(|r| {
                    r.iter().all(|&j| {
                        j != usize::MAX
                            && uses_v(j)
                            && g.nodes[j].inputs[0] == u
                            && !g.nodes[j].reads()[1..].contains(&u)
                    })
                })
        };
        let mut out = SharedInputs::default();
        // Groups of convolutions: the list of values, and each member with the length of the
        // prefix it reads, in node order.
        type Group = (Vec<ValueId>, Vec<(usize, usize)>);
        let mut groups: Vec<Group> = Vec::new();
        for (j, n) in g.nodes.iter().enumerate() {
            if !uses_v(j) {
                continue;
            }
            let u = n.inputs[0];
            let parts = match producer.get(&u) {
                Some(&p) if skippable(p) => {
                    out.skipped.insert(p);
                    g.nodes[p].inputs.clone()
                }
                _ => vec![u],
            };
            // Only consecutive users of V may share it: any other one overwrites it.
            match groups.last_mut() {
                Some((list, members)) if list.starts_with(&parts) || parts.starts_with(list) => {
                    if parts.len() > list.len() {
                        *list = parts.clone();
                    }
                    members.push((j, parts.len()));
                }
                _ => groups.push((parts.clone(), vec![(j, parts.len())])),
            }
        }
        for (list, members) in groups {
            let groups_of = |v: ValueId| g.values[v].channels.div_ceil(4) as u32;
            let vgroups: u32 = list.iter().map(|&v| groups_of(v)).sum();
            let mut g0 = 0;
            let mut done = 0;
            for (j, len) in members {
                let mut transforms = Vec::new();
                for &v in &list[done.min(len)..len] {
                    transforms.push((v, winograd::Slot { vgroups, g0 }));
                    out.late_reads.push((v, j));
                    g0 += groups_of(v);
                }
                done = done.max(len);
                out.at.insert(j, (transforms, vgroups));
            }
        }
        out
    }
}

/// Winograd scratch bytes (input side, output side) of conv node `n` for `batch` inputs of
/// `h` x `w` to the graph.
fn winograd_scratch(g: &Graph, n: &Node, c: &Conv, batch: usize, h: usize, w: usize) -> (u64, u64) {
    let s = g.values[n.inputs[0]].scale as usize;
    winograd::scratch_bytes(c.in_ch, c.out_ch, batch, h * s, w * s)
}

/// Whether conv node `n` gets a direct fallback: a Winograd convolution past an upsampling
/// (input scale over 1, as in ESRGAN's nearest-upsampling tail) whose scratch outgrows every
/// value of the graph. Such layers hold little of the work but the largest tensors, so
/// computing them directly buys larger windows for the whole body. Layers at the input scale
/// keep Winograd: there the windows it costs (x4fast: 483 px against 580 on lavapipe) are
/// worth less than its 4x fewer products.
fn winograd_outgrows_values(g: &Graph, n: &Node) -> bool {
    const NOMINAL: usize = 64;
    let Op::Conv(c) = &n.op else { return false };
    if g.values[n.inputs[0]].scale <= 1 {
        return false;
    }
    let (v, m) = winograd_scratch(g, n, c, 1, NOMINAL, NOMINAL);
    let largest = g
        .values
        .iter()
        .map(|v| (v.channels.div_ceil(4) * 16 * (NOMINAL * v.scale as usize).pow(2)) as u64)
        .max()
        .unwrap_or(0);
    v.max(m) > largest
}

/// Pooled cells RefER compares in a `h` x `w` feature map (one per 3x3 block).
pub fn refer_cells(h: usize, w: usize) -> usize {
    h.div_ceil(3) * w.div_ceil(3)
}

/// Scratch bytes of one RefER alignment: the query's and the reference's codes, the cost
/// volume and the best match per cell.
fn refer_scratch(batch: usize, channels: usize, h: usize, w: usize) -> [u64; 4] {
    let cells = refer_cells(h, w) as u64;
    let b = batch as u64;
    let codes = b * cells * channels.div_ceil(4) as u64 * 4;
    [codes, codes, b * cells * cells * 4, b * cells * 4]
}

/// Everything needed to run one input shape, recorded once.
pub struct Plan {
    ctx: Arc<Context>,
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub scale: usize,
    input: Arc<wgpu::Buffer>,
    input_bytes: u64,
    /// Values no node produces: (value, buffer, bytes).
    externals: Vec<(ValueId, Arc<wgpu::Buffer>, u64)>,
    /// Values kept readable after a run: (value, buffer, bytes).
    kept: Vec<(ValueId, Arc<wgpu::Buffer>, u64)>,
    output: Arc<wgpu::Buffer>,
    output_bytes: u64,
    steps: Vec<Step>,
    /// The stage of each step, for profiles.
    stages: Vec<Stage>,
    owned: Vec<Arc<wgpu::Buffer>>,
    /// Device memory the plan's tensors need at their peak.
    pub peak_bytes: u64,
}

impl Plan {
    /// Run on a C4HW input of `batch` x `in_channels` x `h` x `w` and return the C4HW output.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>> {
        self.run_with(input, &[])
    }

    /// [`Plan::run`] for graphs that also read values no node produces (given as
    /// (value, C4HW data) pairs).
    pub fn run_with(&self, input: &[f32], externals: &[(ValueId, &[f32])]) -> Result<Vec<f32>> {
        self.check_input(input);
        let ctx = &self.ctx;
        ctx.queue
            .write_buffer(&self.input, 0, bytemuck::cast_slice(input));
        for (v, data) in externals {
            let (_, buf, size) = self
                .externals
                .iter()
                .find(|e| e.0 == *v)
                .expect("value is an external input of the plan");
            assert_eq!(
                data.len() as u64 * 4,
                *size,
                "external input size does not match the plan"
            );
            ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(data));
        }
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("plan"),
            });
        self.encode(&mut encoder);
        let staging = self.readback();
        encoder.copy_buffer_to_buffer(&self.output, 0, &staging, 0, self.output_bytes);
        ctx.submit(encoder.finish());
        ctx.map_read(&staging)
    }

    fn check_input(&self, input: &[f32]) {
        assert_eq!(
            input.len() as u64 * 4,
            self.input_bytes,
            "input size does not match the plan"
        );
    }

    /// A host-readable buffer the size of the output, for one run to copy it into.
    fn readback(&self) -> wgpu::Buffer {
        self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("output readback"),
            size: self.output_bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// [`Plan::run_profiled`] when there is a profiler, else [`Plan::run`].
    pub fn run_maybe_profiled(
        &self,
        input: &[f32],
        prof: Option<&Profiler>,
        body: Stage,
    ) -> Result<Vec<f32>> {
        match prof {
            Some(p) => self.run_profiled(input, p, body),
            None => self.run(input),
        }
    }

    /// [`Plan::run`] measured by `prof`: the body's steps count as `body` (or, when `body` is
    /// [`Stage::ClustBlock`], every step and both transfers do), the others as their own stage.
    pub fn run_profiled(&self, input: &[f32], prof: &Profiler, body: Stage) -> Result<Vec<f32>> {
        self.check_input(input);
        let ctx = &self.ctx;
        let whole = body == Stage::ClustBlock;
        let pick = |s: Stage| match s {
            _ if whole => Stage::ClustBlock,
            Stage::Body => body,
            s => s,
        };
        let staging = prof.host(pick(Stage::Upload), || {
            use wgpu::util::DeviceExt;
            ctx.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("input upload"),
                    contents: bytemuck::cast_slice(input),
                    usage: wgpu::BufferUsages::COPY_SRC,
                })
        });
        let readback = self.readback();
        let mut segments: Vec<Segment> = vec![(
            pick(Stage::Upload),
            Box::new(|enc: &mut wgpu::CommandEncoder| {
                enc.copy_buffer_to_buffer(&staging, 0, &self.input, 0, self.input_bytes)
            }),
        )];
        let mut i = 0;
        while i < self.steps.len() {
            let stage = self.stages[i];
            let end = (i..self.steps.len())
                .find(|&k| self.stages[k] != stage)
                .unwrap_or(self.steps.len());
            let steps = &self.steps[i..end];
            segments.push((
                pick(stage),
                Box::new(move |enc: &mut wgpu::CommandEncoder| kernels::encode(steps, enc)),
            ));
            i = end;
        }
        segments.push((
            pick(Stage::Download),
            Box::new(|enc: &mut wgpu::CommandEncoder| {
                enc.copy_buffer_to_buffer(&self.output, 0, &readback, 0, self.output_bytes)
            }),
        ));
        prof.submit(ctx, segments)?;
        prof.host(pick(Stage::Download), || ctx.map_read(&readback))
    }

    /// The buffer of value `v`, kept by [`GpuModel::plan_keeping`]: C4HW, batch item `n` at
    /// byte `n * size / batch`.
    pub fn kept(&self, v: ValueId) -> &wgpu::Buffer {
        &self
            .kept
            .iter()
            .find(|k| k.0 == v)
            .expect("value kept by the plan")
            .1
    }

    /// The buffer of external input `v` (laid out as [`Plan::kept`]), for the caller to fill
    /// on the device before a run.
    pub fn external(&self, v: ValueId) -> &wgpu::Buffer {
        &self
            .externals
            .iter()
            .find(|e| e.0 == v)
            .expect("value is an external input of the plan")
            .1
    }

    /// The C4HW contents of value `v` after the last run (`v` must have been kept, see
    /// [`GpuModel::plan_keeping`]).
    pub fn read_value(&self, v: ValueId) -> Result<Vec<f32>> {
        let (_, buf, size) = self
            .kept
            .iter()
            .find(|k| k.0 == v)
            .expect("value kept by the plan");
        self.ctx.read(buf, *size)
    }

    /// Run the recorded launches on whatever the buffers hold and wait for the device: the
    /// kernels alone, for benchmarks.
    pub fn execute(&self) -> Result<()> {
        let ctx = &self.ctx;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("plan"),
            });
        self.encode(&mut encoder);
        ctx.submit_and_wait(encoder.finish())
    }

    /// Host wall time (ms) of each step run on its own, submitted and waited for one at a
    /// time, on `input` (a coarse profile that needs no timestamp queries).
    pub fn profile(&self, input: &[f32]) -> Result<Vec<(String, f64)>> {
        let ctx = &self.ctx;
        ctx.queue
            .write_buffer(&self.input, 0, bytemuck::cast_slice(input));
        let mut out = Vec::new();
        for step in self.steps.chunks(1) {
            let t = std::time::Instant::now();
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            kernels::encode(step, &mut encoder);
            ctx.submit_and_wait(encoder.finish())?;
            out.push((step[0].label().to_string(), t.elapsed().as_secs_f64() * 1e3));
        }
        Ok(out)
    }

    fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        kernels::encode(&self.steps, encoder);
    }

    /// Fill every tensor buffer of the plan with NaN, so that a kernel that fails to write an
    /// element shows up in comparisons (tests call this before a run).
    pub fn poison(&self) {
        for b in &self.owned {
            let nan = vec![f32::NAN; (b.size() / 4) as usize];
            self.ctx
                .queue
                .write_buffer(b, 0, bytemuck::cast_slice(&nan));
        }
    }
}

impl Drop for Plan {
    /// Every buffer the plan took goes back to the pool, its input, output, kept and external
    /// buffers included (`owned` lists each once; a `wgpu::Buffer` clone is the same buffer).
    fn drop(&mut self) {
        self.steps.clear();
        for b in self.owned.drain(..) {
            self.ctx.release((*b).clone());
        }
    }
}
