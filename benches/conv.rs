//! Criterion benches of the convolution kernels on the device tests use (lavapipe in CI):
//! SPAN's 48->48 3x3 body conv (Winograd: input transform + gemm + output transform, and the
//! direct kernel) and its 192->48 1x1 (gemm, and direct); the int8 product alone; and both
//! shapes as whole integer body layers in w8a8 and w4a4 (packed in, epilogue fused, packed
//! out).
//! `REFQSR_BENCH_QUICK=1` shrinks the images so CI can run it in seconds.
//! Each iteration submits the launch and waits for the device before the clock stops.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use refqsr::exec::GpuModel;
use refqsr::gpu::Context;
use refqsr::kernels::gemm_int8::{GpuGemmInt8, PackedGemmInt8};
use refqsr::kernels::int_conv::{GpuIntConv, IntInput, IntOutput, PackedIntConv};
use refqsr::kernels::int_store::Store;
use refqsr::kernels::{encode, Step};
use refqsr::model::{Activation, Conv, Epilogue, Graph, Node, Op, Value};
use refqsr::quant::Quantizer;

/// Record `steps`, submit them and wait for the device, so the clock stops after the work.
fn submit_and_wait(ctx: &Context, steps: &[Step]) {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encode(steps, &mut encoder);
    ctx.submit_and_wait(encoder.finish()).unwrap();
}

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

    // The integer product of the same 1x1 shape (issue 3's building block): packed i8 x i8
    // -> i32 with dot4I8Packed, against the f32 gemm above.
    let mut group = c.benchmark_group("gemm_int8");
    group.sample_size(10);
    let (ic, oc) = (192usize, 48usize);
    let codes: Vec<i8> = (0..ic * oc).map(|i| (i * 7919 % 255) as u8 as i8).collect();
    let packed = PackedGemmInt8::new(1, ic, oc, &codes, &vec![0; oc]);
    let gpu = GpuGemmInt8::new(&ctx, packed).unwrap();
    let tiles = (side * side) as u32;
    let a = ctx.acquire(tiles as u64 * (ic as u64 / 4) * 4);
    let m = ctx.acquire(tiles as u64 * (oc as u64 / 4) * 16);
    let steps: Vec<Step> = gpu
        .dispatch(&ctx, "bench", &a, &m, &Store::Sums, 1, tiles)
        .into_iter()
        .map(Step::Launch)
        .collect();
    let run = || submit_and_wait(&ctx, &steps);
    run();
    group.throughput(Throughput::Elements((side * side * ic * oc) as u64));
    group.bench_function(format!("1x1_{ic}_{oc}_{side}x{side}"), |b| b.iter(run));
    group.finish();

    // Whole integer body layers as the integer modes run them between two integer layers:
    // packed input -> conv_int8 / gemm_int8 / conv_int4 with the epilogue fused -> packed
    // input of the next layer. On the shapes of conv_f32 above: the per-layer ratio.
    let mut group = c.benchmark_group("conv_int_layer");
    group.sample_size(10);
    let plane = (side * side) as u32;
    for bits in [8u32, 4] {
        for (name, ic, oc, k) in [("3x3_48_48_swish", 48, 48, 3), ("1x1_192_48", 192, 48, 1)] {
            let graph = conv_graph(ic, oc, k, Activation::Swish);
            let Op::Conv(conv) = &graph.nodes[0].op else {
                unreachable!()
            };
            let q = Quantizer::new(-1.0, 1.0, bits);
            let layer = PackedIntConv::new(conv, bits, q);
            // the next body layer (48 -> 48, 3x3) decides the packed form of the output
            let next_graph = conv_graph(oc, oc, 3, Activation::Swish);
            let Op::Conv(next) = &next_graph.nodes[0].op else {
                unreachable!()
            };
            let next = PackedIntConv::new(next, bits, q);
            let (words, cols) = layer.scratch_words(1, plane as usize);
            let gpu = GpuIntConv::new(&ctx, layer).unwrap();
            let input = ctx.acquire(words as u64 * 4);
            let cols = ctx.acquire(cols.max(4) as u64 * 4);
            let out = ctx.acquire(plane as u64 * oc as u64 * 4);
            let steps: Vec<Step> = gpu
                .dispatch(
                    &ctx,
                    "bench",
                    IntInput::Packed(&input),
                    None,
                    IntOutput::Packed(&out, &next),
                    [&input, &cols],
                    1,
                    side as u32,
                    side as u32,
                )
                .unwrap()
                .into_iter()
                .map(Step::Launch)
                .collect();
            let run = || submit_and_wait(&ctx, &steps);
            run();
            group.throughput(Throughput::Elements((side * side * ic * oc * k * k) as u64));
            group.bench_function(format!("{name}_w{bits}a{bits}_{side}x{side}"), |b| {
                b.iter(run)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
