//! Criterion benches of the convolution kernels on the device tests use (lavapipe in CI):
//! SPAN's 48->48 3x3 body conv (Winograd: input transform + gemm + output transform, and the
//! direct kernel) and its 192->48 1x1 (gemm, and direct).
//! `REFQSR_BENCH_QUICK=1` shrinks the images so CI can run it in seconds.
//! Each iteration submits the launch and waits for the device before the clock stops.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use refqsr::exec::GpuModel;
use refqsr::gpu::Context;
use refqsr::model::{Activation, Conv, Epilogue, Graph, Node, Op, Value};

fn conv_graph(in_ch: usize, out_ch: usize, k: usize, act: Activation) -> Graph {
    let n = in_ch * out_ch * k * k;
    let conv = Conv {
        in_ch,
        out_ch,
        k,
        weights: (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) / (in_ch as f32))
            .collect(),
        bias: vec![0.01; out_ch],
        act,
        epilogue: Epilogue::None,
    };
    Graph {
        name: "bench".into(),
        values: vec![
            Value {
                name: "x".into(),
                channels: in_ch,
                scale: 1,
            },
            Value {
                name: "y".into(),
                channels: out_ch,
                scale: 1,
            },
        ],
        nodes: vec![Node {
            name: "conv".into(),
            op: Op::Conv(conv),
            inputs: vec![0],
            output: 1,
        }],
        input: 0,
        output: 1,
    }
}

fn bench(c: &mut Criterion) {
    let ctx = Context::new(std::env::var("REFQSR_ADAPTER").ok().as_deref()).expect("a GPU adapter");
    eprintln!("benchmarking on {}", ctx.describe());
    let side = if std::env::var_os("REFQSR_BENCH_QUICK").is_some() {
        64
    } else {
        256
    };
    let mut group = c.benchmark_group("conv_f32");
    group.sample_size(10);
    let cases = [
        ("3x3_48_48_swish_winograd", 48, 48, 3, true),
        ("3x3_48_48_swish_direct", 48, 48, 3, false),
        ("1x1_192_48_gemm", 192, 48, 1, true),
        ("1x1_192_48_direct", 192, 48, 1, false),
    ];
    for (name, ic, oc, k, fast) in cases {
        let graph = conv_graph(ic, oc, k, Activation::Swish);
        let model = if fast {
            GpuModel::new(ctx.clone(), graph)
        } else {
            GpuModel::new_direct(ctx.clone(), graph)
        }
        .unwrap();
        let plan = model.plan(1, side, side).unwrap();
        plan.execute().unwrap(); // pipeline warm-up
                                 // Multiply-accumulates of the direct definition, so both algorithms share a scale.
        group.throughput(Throughput::Elements((side * side * ic * oc * k * k) as u64));
        group.bench_function(format!("{name}_{side}x{side}"), |b| {
            b.iter(|| plan.execute().unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
