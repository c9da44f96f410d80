//! Every kernel against its CPU twin on fresh random inputs, with GPU buffers poisoned (NaN)
//! before each run so that an element a kernel fails to write cannot pass.

mod common;

use common::{ctx, launch, max_abs_diff, Rng};
use refqsr::exec::GpuModel;
use refqsr::kernels::conv::PackedConv;
use refqsr::kernels::cpu::{self, Tensor};
use refqsr::model::{Activation, BinaryKind, Conv, Epilogue, Graph, Node, Op, Rhs, Value};

/// fp32 sums of up to 48 x 9 products of values in [-1, 1]: the GPU may fuse multiply-adds
/// or reassociate the 4-term dot products, the CPU twin does not.
const CONV_TOL: f32 = 2e-5;
/// Winograd F(4x4, 3x3) against the direct sum: the transforms scale values by up to ~100
/// before the products, so the rounding differs by more than reordering alone.
const WINOGRAD_TOL: f32 = 2e-4;
/// Pointwise ops: one rounding, plus exp() differences between drivers.
const POINTWISE_TOL: f32 = 2e-6;

/// A graph computing `op` on inputs of the given channel counts (same spatial size).
fn single(
    op: Op,
    in_channels: &[usize],
    out_channels: usize,
    out_scale: u32,
    residual: Option<usize>,
) -> (Graph, Vec<usize>) {
    let mut values: Vec<Value> = in_channels
        .iter()
        .enumerate()
        .map(|(i, &c)| Value {
            name: format!("in{i}"),
            channels: c,
            scale: 1,
        })
        .collect();
    values.push(Value {
        name: "out".into(),
        channels: out_channels,
        scale: out_scale,
    });
    let mut nodes = Vec::new();
    // Extra inputs are produced by cheap identity ops from input 0 so that the graph stays
    // single-input; their values are then overwritten through a channel-wise mul by 1.
    let inputs: Vec<usize> = (0..in_channels.len()).collect();
    let out = values.len() - 1;
    let op = match (op, residual) {
        (Op::Conv(mut c), Some(r)) => {
            c.epilogue = match c.epilogue {
                Epilogue::SpanGate(_) => Epilogue::SpanGate(r),
                Epilogue::Add(_) => Epilogue::Add(r),
                Epilogue::None => Epilogue::None,
            };
            Op::Conv(c)
        }
        (op, _) => op,
    };
    let node_inputs = match &op {
        Op::Conv(_) => vec![0],
        _ => inputs.clone(),
    };
    nodes.push(Node {
        name: "under test".into(),
        op,
        inputs: node_inputs,
        output: out,
    });
    (
        Graph {
            name: "test".into(),
            values,
            nodes,
            input: 0,
            output: out,
        },
        inputs,
    )
}

/// Run `graph` on the GPU with every value in `inputs` uploaded as given.
fn run_gpu(graph: &Graph, inputs: &[&Tensor]) -> Vec<f32> {
    run_gpu_with(GpuModel::new(ctx(), graph.clone()).unwrap(), inputs)
}

fn run_gpu_with(model: GpuModel, inputs: &[&Tensor]) -> Vec<f32> {
    let t = inputs[0];
    let plan = model.plan(t.n, t.h, t.w).unwrap();
    plan.poison();
    let extra: Vec<(usize, &[f32])> = inputs
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, t)| (i, &t.data[..]))
        .collect();
    plan.run_with(&t.data, &extra).unwrap()
}

fn run_cpu(graph: &Graph, inputs: &[&Tensor]) -> Tensor {
    cpu::run_graph_with(graph, inputs)
}

fn random_conv(
    rng: &mut Rng,
    in_ch: usize,
    out_ch: usize,
    k: usize,
    act: Activation,
    epilogue: Epilogue,
) -> Conv {
    let fan = (in_ch * k * k) as f32;
    Conv {
        in_ch,
        out_ch,
        k,
        weights: rng
            .vec(out_ch * in_ch * k * k, -1.0, 1.0)
            .iter()
            .map(|w| w / fan.sqrt())
            .collect(),
        bias: rng.vec(out_ch, -0.5, 0.5),
        act,
        epilogue,
    }
}

#[test]
fn conv_matches_cpu_twin() {
    let mut rng = Rng::fresh("conv");
    let acts = [
        Activation::None,
        Activation::Relu,
        Activation::Leaky(0.1),
        Activation::PRelu(vec![]),
        Activation::Swish,
        Activation::Sigmoid,
    ];
    // (in, out, k, h, w): odd widths, channel counts off multiples of 4 and 8, 1x1 and 3x3,
    // images smaller than the kernel's reach.
    let shapes = [
        (3, 48, 3, 9, 13),
        (48, 48, 3, 12, 17),
        (48, 12, 3, 5, 4),
        (192, 48, 1, 7, 9),
        (5, 7, 3, 1, 1),
        (8, 3, 3, 3, 2),
        (16, 20, 1, 6, 5),
    ];
    for (si, &(ic, oc, k, h, w)) in shapes.iter().enumerate() {
        for (ai, act) in acts.iter().enumerate() {
            let act = match act {
                Activation::PRelu(_) => Activation::PRelu(rng.vec(oc, -0.5, 0.5)),
                a => a.clone(),
            };
            let epi = [Epilogue::None, Epilogue::SpanGate(1), Epilogue::Add(1)][(si + ai) % 3];
            let epi = if epi == Epilogue::SpanGate(1) && act != Activation::None {
                Epilogue::Add(1)
            } else {
                epi
            };
            let conv = random_conv(&mut rng, ic, oc, k, act.clone(), epi);
            let batch = 1 + rng.below(2);
            let x = rng.tensor(batch, ic, h, w);
            let (graph, inputs) = if epi == Epilogue::None {
                single(Op::Conv(conv), &[ic], oc, 1, None)
            } else {
                single(Op::Conv(conv), &[ic, oc], oc, 1, Some(1))
            };
            let r = rng.tensor(batch, oc, h, w);
            let ins: Vec<&Tensor> = if inputs.len() == 2 {
                vec![&x, &r]
            } else {
                vec![&x]
            };
            let want = run_cpu(&graph, &ins);
            let got = run_gpu(&graph, &ins);
            let d = max_abs_diff(&got, &want.data);
            assert!(
                d <= CONV_TOL,
                "conv {ic}->{oc} k{k} {h}x{w} x{batch} {act:?} {epi:?}: max diff {d}"
            );
            assert!(
                want.data.iter().any(|v| v.abs() > 0.01),
                "degenerate test data"
            );
            // The direct kernel against its twin, and the two algorithms against each other.
            let Op::Conv(c) = &graph.nodes[0].op else {
                unreachable!()
            };
            let residual = (ins.len() == 2).then(|| ins[1]);
            let direct = cpu::conv(&x, &PackedConv::new(c), residual);
            let got = run_gpu_with(GpuModel::new_direct(ctx(), graph.clone()).unwrap(), &ins);
            let d = max_abs_diff(&got, &direct.data);
            assert!(
                d <= CONV_TOL,
                "direct conv {ic}->{oc} k{k} {h}x{w}: max diff {d}"
            );
            let d = max_abs_diff(&want.data, &direct.data);
            assert!(
                d <= WINOGRAD_TOL,
                "winograd vs direct {ic}->{oc} k{k} {h}x{w} {act:?}: max diff {d}"
            );
        }
    }
}

#[test]
fn binary_matches_cpu_twin() {
    let mut rng = Rng::fresh("binary");
    for kind in [
        BinaryKind::Add,
        BinaryKind::Sub,
        BinaryKind::Mul,
        BinaryKind::Div,
        BinaryKind::RSub,
        BinaryKind::Max,
        BinaryKind::Min,
    ] {
        for (c, h, w) in [(3, 5, 7), (48, 4, 4), (6, 1, 9)] {
            let a = rng.tensor(2, c, h, w);
            let b = rng.tensor(2, c, h, w);
            for rhs in [
                Rhs::Tensor,
                Rhs::Scalar(rng.uniform(-2.0, 2.0)),
                Rhs::PerChannel(rng.vec(c, 0.5, 2.0)),
            ] {
                let tensor = rhs == Rhs::Tensor;
                let chans: Vec<usize> = if tensor { vec![c, c] } else { vec![c] };
                let (graph, _) = single(
                    Op::Binary {
                        kind,
                        rhs: rhs.clone(),
                    },
                    &chans,
                    c,
                    1,
                    None,
                );
                let ins: Vec<&Tensor> = if tensor { vec![&a, &b] } else { vec![&a] };
                let want = run_cpu(&graph, &ins);
                let got = run_gpu(&graph, &ins);
                let d = max_abs_diff(&got, &want.data);
                // Division by values near zero amplifies one-ulp differences.
                let tol = if kind == BinaryKind::Div {
                    1e-3
                } else {
                    POINTWISE_TOL
                };
                assert!(d <= tol, "{kind:?} {rhs:?} {c}x{h}x{w}: max diff {d}");
            }
        }
    }
}

#[test]
fn unary_matches_cpu_twin() {
    let mut rng = Rng::fresh("unary");
    for c in [3, 8, 13] {
        let acts = [
            Activation::Relu,
            Activation::Leaky(0.2),
            Activation::PRelu(rng.vec(c, -1.0, 1.0)),
            Activation::Swish,
            Activation::Sigmoid,
        ];
        for act in acts {
            let x = rng.tensor(2, c, 6, 11);
            let (graph, _) = single(Op::Act(act.clone()), &[c], c, 1, None);
            let want = run_cpu(&graph, &[&x]);
            let got = run_gpu(&graph, &[&x]);
            let d = max_abs_diff(&got, &want.data);
            assert!(d <= POINTWISE_TOL, "{act:?} c{c}: max diff {d}");
        }
    }
}

#[test]
fn concat_matches_cpu_twin() {
    let mut rng = Rng::fresh("concat");
    for chans in [vec![48, 48, 48, 48], vec![3, 5], vec![1, 2, 7], vec![4]] {
        let ts: Vec<Tensor> = chans.iter().map(|&c| rng.tensor(2, c, 5, 6)).collect();
        let total = chans.iter().sum();
        let (graph, _) = single(Op::Concat, &chans, total, 1, None);
        let ins: Vec<&Tensor> = ts.iter().collect();
        let want = run_cpu(&graph, &ins);
        let got = run_gpu(&graph, &ins);
        assert_eq!(max_abs_diff(&got, &want.data), 0.0, "concat {chans:?}");
        // And the twin itself puts every channel where it belongs.
        let mut off = 0;
        for t in &ts {
            for c in 0..t.c {
                assert_eq!(want.get(1, off + c, 4, 5), t.get(1, c, 4, 5));
            }
            off += t.c;
        }
    }
}

#[test]
fn pixel_shuffle_matches_cpu_twin() {
    let mut rng = Rng::fresh("pixel_shuffle");
    for (c, r) in [(48, 4), (12, 2), (3, 1), (27, 3)] {
        let x = rng.tensor(2, c, 5, 7);
        let (graph, _) = single(
            Op::PixelShuffle { factor: r as u32 },
            &[c],
            c / (r * r),
            r as u32,
            None,
        );
        let want = run_cpu(&graph, &[&x]);
        let got = run_gpu(&graph, &[&x]);
        assert_eq!(
            max_abs_diff(&got, &want.data),
            0.0,
            "pixel shuffle {c} by {r}"
        );
        // PyTorch semantics: out[c][y*r+i][x*r+j] = in[c*r*r + i*r + j][y][x]
        let oc = c / (r * r);
        let (ch, i, j) = (oc - 1, r - 1, 0);
        assert_eq!(
            want.get(1, ch, 4 * r + i, 6 * r + j),
            x.get(1, ch * r * r + i * r + j, 4, 6)
        );
    }
}

#[test]
fn interp_matches_cpu_twin() {
    let mut rng = Rng::fresh("interp");
    for (c, f) in [(3, 4), (5, 2), (8, 1)] {
        let x = rng.tensor(2, c, 4, 3);
        let (graph, _) = single(Op::InterpNearest { factor: f }, &[c], c, f, None);
        let want = run_cpu(&graph, &[&x]);
        let got = run_gpu(&graph, &[&x]);
        assert_eq!(max_abs_diff(&got, &want.data), 0.0, "interp {c} by {f}");
    }
}

#[test]
fn gemm_at_every_workgroup_size_matches_cpu_twin() {
    use refqsr::kernels::gemm::{workgroup_size, PX};
    let mut rng = Rng::fresh("gemm workgroups");
    // (in, out, k, h, w) and the workgroup the gemm should get: 3x3 convolutions run it over
    // ceil(h/4) * ceil(w/4) Winograd tiles, 1x1 convolutions over h * w pixels, PX per
    // invocation.
    let shapes = [
        (16, 20, 1, 64usize, 64usize, 64u32),
        (12, 8, 3, 64, 60, 32),
        (8, 12, 3, 40, 48, 16),
        (7, 5, 3, 8, 8, 8),
        (20, 24, 1, 31, 17, 8),
    ];
    for (ic, oc, k, h, w, wg) in shapes {
        let columns = if k == 3 {
            h.div_ceil(4) * w.div_ceil(4)
        } else {
            h * w
        };
        assert_eq!(
            workgroup_size(columns.div_ceil(PX) as u32),
            wg,
            "{ic}->{oc} k{k} {h}x{w} no longer covers workgroup size {wg}"
        );
        let conv = random_conv(&mut rng, ic, oc, k, Activation::Leaky(0.2), Epilogue::None);
        let (graph, _) = single(Op::Conv(conv), &[ic], oc, 1, None);
        let x = rng.tensor(1, ic, h, w);
        let want = run_cpu(&graph, &[&x]);
        let d = max_abs_diff(&run_gpu(&graph, &[&x]), &want.data);
        assert!(
            d <= CONV_TOL,
            "{ic}->{oc} k{k} {h}x{w} (workgroup {wg}): max diff {d}"
        );
    }
}

#[test]
fn winograd_past_an_upsampling_falls_back_to_direct_where_its_scratch_cannot_bind() {
    use refqsr::kernels::winograd::scratch_bytes;
    let mut rng = Rng::fresh("winograd fallback");
    // input (4 channels) -> nearest x4 -> conv 3x3 4->4: at 484x484 the conv's transformed
    // input (36/16 of its 1936x1936 input) outgrows the 128 MiB binding cap every adapter
    // gets, while every tensor still fits.
    let (h, w, f, c) = (484, 484, 4u32, 4);
    let (sv, _) = scratch_bytes(c, c, 1, h * f as usize, w * f as usize);
    assert!(
        sv > 128 << 20,
        "the size no longer outgrows the cap: {sv} bytes"
    );
    let conv = random_conv(&mut rng, c, c, 3, Activation::None, Epilogue::None);
    let value = |name: &str, scale| Value {
        name: name.into(),
        channels: c,
        scale,
    };
    let graph = Graph {
        name: "upsampled conv".into(),
        values: vec![value("in", 1), value("up", f), value("out", f)],
        nodes: vec![
            Node {
                name: "up".into(),
                op: Op::InterpNearest { factor: f },
                inputs: vec![0],
                output: 1,
            },
            Node {
                name: "conv".into(),
                op: Op::Conv(conv),
                inputs: vec![1],
                output: 2,
            },
        ],
        input: 0,
        output: 2,
    };
    let model = GpuModel::new(ctx(), graph.clone()).unwrap();
    let (largest, _) = model.memory(1, h, w);
    assert!(largest < sv, "the plan still binds the Winograd scratch");
    let x = rng.tensor(1, c, h, w);
    // the CPU reference computes the conv by Winograd, the GPU directly
    let want = run_cpu(&graph, &[&x]);
    let d = max_abs_diff(&run_gpu_with(model, &[&x]), &want.data);
    assert!(d <= WINOGRAD_TOL, "direct fallback: max diff {d}");
    assert!(
        want.data.iter().any(|v| v.abs() > 0.01),
        "degenerate test data"
    );
}

#[test]
fn winograd_products_over_a_shared_transformed_input_match_cpu_twins() {
    use refqsr::kernels::winograd::{tiles, transform, GpuWinograd, PackedWinograd, Slot, POS};
    let ctx = ctx();
    let mut rng = Rng::fresh("winograd shared input");
    // Two inputs transformed into one V of 3 channel groups (a at group 0, b at group 2); one
    // product reads a alone (the prefix), another the whole row (cat(a, b)).
    let (n, h, w, vgroups) = (2usize, 10usize, 9usize, 3usize);
    let a = rng.tensor(n, 8, h, w);
    let b = rng.tensor(n, 4, h, w);
    let t = tiles(h, w).1;
    let mut v = vec![[f32::NAN; 4]; n * POS * vgroups * t];
    cpu::winograd_input_into(&a, &mut v, vgroups, 0);
    cpu::winograd_input_into(&b, &mut v, vgroups, 2);
    assert!(
        v.iter().flatten().all(|x| x.is_finite()),
        "twin left V unwritten"
    );

    let v_buf = ctx.acquire((v.len() * 16) as u64);
    let m_buf = ctx.acquire((n * POS * 2 * t * 16) as u64);
    let nan = vec![f32::NAN; v.len() * 4];
    ctx.queue
        .write_buffer(&v_buf, 0, bytemuck::cast_slice(&nan));
    let pipeline = ctx.pipeline("winograd_input", &[]).unwrap();
    let (sa, sb) = (ctx.upload("a", &a.data), ctx.upload("b", &b.data));
    let slot = |g0| Slot {
        vgroups: vgroups as u32,
        g0,
    };
    let (nn, hh, ww) = (n as u32, h as u32, w as u32);
    launch(
        &ctx,
        [
            transform(&ctx, "a", &pipeline, &sa, 2, &v_buf, slot(0), nn, hh, ww),
            transform(&ctx, "b", &pipeline, &sb, 1, &v_buf, slot(2), nn, hh, ww),
        ],
    );
    let got_v = ctx.read(&v_buf, (v.len() * 16) as u64).unwrap();
    let want_v: Vec<f32> = v.iter().flatten().copied().collect();
    let d = max_abs_diff(&got_v, &want_v);
    assert!(d <= CONV_TOL * 100.0, "shared V: max diff {d}");

    for (in_ch, out_ch) in [(8usize, 8usize), (12, 5)] {
        let conv = random_conv(
            &mut rng,
            in_ch,
            out_ch,
            3,
            Activation::Leaky(0.2),
            Epilogue::None,
        );
        let packed = PackedWinograd::new(&conv);
        let want = cpu::winograd_output(
            &cpu::gemm(&v, vgroups, &packed.gemm, n, t, None),
            &packed,
            n,
            h,
            w,
            None,
        );
        // independent of the shared layout: the same convolution over the built input
        let built = if in_ch == 8 {
            cpu::winograd(&a, &packed, None)
        } else {
            cpu::winograd(&cpu::concat(&[&a, &b]), &packed, None)
        };
        assert_eq!(
            max_abs_diff(&want.data, &built.data),
            0.0,
            "{in_ch}->{out_ch}: the twin over the shared V is not the convolution"
        );
        let gpu = GpuWinograd::new(&ctx, packed).unwrap();
        let dst = ctx.acquire((want.data.len() * 4) as u64);
        let poison = vec![f32::NAN; want.data.len()];
        ctx.queue
            .write_buffer(&dst, 0, bytemuck::cast_slice(&poison));
        launch(
            &ctx,
            gpu.product(
                &ctx,
                "p",
                &v_buf,
                vgroups as u32,
                None,
                &dst,
                &m_buf,
                nn,
                hh,
                ww,
            )
            .unwrap(),
        );
        let got = ctx.read(&dst, (want.data.len() * 4) as u64).unwrap();
        let d = max_abs_diff(&got, &want.data);
        assert!(
            d <= WINOGRAD_TOL,
            "{in_ch}->{out_ch} over shared V: max diff {d}"
        );
        // a V row narrower than the product is refused, not read past
        assert!(gpu
            .product(
                &ctx,
                "p",
                &v_buf,
                (in_ch / 4 - 1) as u32,
                None,
                &dst,
                &m_buf,
                nn,
                hh,
                ww
            )
            .is_err());
        ctx.release(dst);
    }
    ctx.release(v_buf);
    ctx.release(m_buf);
}

#[test]
fn dense_block_convolutions_read_their_concatenations_from_one_transformed_input() {
    let mut rng = Rng::fresh("dense block");
    // An RRDB dense block, shrunk: x (8 channels); x1 = conv(x), x2 = conv(cat(x, x1)),
    // y = conv(cat(x, x1, x2)) + x, each 3x3 (4 growth channels).
    let value = |name: &str, channels| Value {
        name: name.into(),
        channels,
        scale: 1,
    };
    let conv = |rng: &mut Rng, i, o, act, epi| Op::Conv(random_conv(rng, i, o, 3, act, epi));
    let leaky = Activation::Leaky(0.2);
    let node = |name: &str, op, inputs: Vec<usize>, output| Node {
        name: name.into(),
        op,
        inputs,
        output,
    };
    let graph = Graph {
        name: "dense block".into(),
        values: vec![
            value("x", 8),
            value("x1", 4),
            value("c1", 12),
            value("x2", 4),
            value("c2", 16),
            value("y", 8),
        ],
        nodes: vec![
            node(
                "conv1",
                conv(&mut rng, 8, 4, leaky.clone(), Epilogue::None),
                vec![0],
                1,
            ),
            node("cat1", Op::Concat, vec![0, 1], 2),
            node(
                "conv2",
                conv(&mut rng, 12, 4, leaky, Epilogue::None),
                vec![2],
                3,
            ),
            node("cat2", Op::Concat, vec![0, 1, 3], 4),
            node(
                "conv3",
                conv(&mut rng, 16, 8, Activation::None, Epilogue::Add(0)),
                vec![4],
                5,
            ),
        ],
        input: 0,
        output: 5,
    };
    let x = rng.tensor(2, 8, 13, 11);
    let model = GpuModel::new(ctx(), graph.clone()).unwrap();
    let plan = model.plan(2, 13, 11).unwrap();
    plan.poison();
    let got = plan.run(&x.data).unwrap();
    let want = run_cpu(&graph, &[&x]);
    let d = max_abs_diff(&got, &want.data);
    assert!(d <= WINOGRAD_TOL, "dense block: max diff {d}");
    // x, x1 and x2 are each transformed once and no concatenation is built
    let labels: Vec<String> = plan
        .profile(&x.data)
        .unwrap()
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    let transforms: Vec<&str> = labels
        .iter()
        .filter_map(|l| l.strip_suffix(" (winograd input)"))
        .collect();
    assert_eq!(
        transforms,
        ["conv1: x", "conv2: x1", "conv3: x2"],
        "input transforms"
    );
    assert!(
        !labels.iter().any(|l| l.starts_with("cat")),
        "a concatenation was built: {labels:?}"
    );
    // keeping a concatenation (as calibration does) builds it, with the same result
    let plan = model.plan_keeping(2, 13, 11, &[2]).unwrap();
    plan.poison();
    let kept = plan.run(&x.data).unwrap();
    assert_eq!(max_abs_diff(&kept, &got), 0.0, "kept concatenation");
    let cat: Vec<f32> = plan.read_value(2).unwrap();
    let want_cat = cpu::concat(&[&x, &run_cpu_value(&graph, &x, 1)]);
    assert!(
        max_abs_diff(&cat, &want_cat.data) <= WINOGRAD_TOL,
        "kept cat1"
    );
}

/// Value `v` of `graph` run on the CPU: the graph cut to output `v`.
fn run_cpu_value(graph: &Graph, x: &Tensor, v: usize) -> Tensor {
    let mut g = graph.clone();
    let end = g.nodes.iter().position(|n| n.output == v).unwrap();
    g.nodes.truncate(end + 1);
    g.output = v;
    run_cpu(&g, &[x])
}
