//! The ncnn layers of the ESRGAN family (realesrgan-x4plus and the RRDBNet community models):
//! Eltwise with coefficients, Concat of any number of inputs, BinaryOp max/min. Each small
//! model is written here as ncnn text and its output checked against values computed in the
//! test from the definition of the layer, on the GPU with poisoned buffers.

mod common;

use common::{ctx, max_abs_diff, upscayl_models, Rng};
use refqsr::exec::GpuModel;
use refqsr::kernels::cpu::Tensor;
use refqsr::model::{ncnn, Graph, Op};

const TOL: f32 = 1e-5;

/// A model from `.param` text and the f32 words of its `.bin`.
fn model(tag: &str, param: &str, bin: &[f32]) -> Graph {
    let dir = std::env::temp_dir().join(format!("refqsr-esrgan-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (p, b) = (dir.join("m.param"), dir.join("m.bin"));
    std::fs::write(&p, param).unwrap();
    std::fs::write(&b, bytemuck::cast_slice::<f32, u8>(bin)).unwrap();
    let g = Graph::load_ncnn(&p, &b).unwrap_or_else(|e| panic!("{tag}: {e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    g
}

/// Run `g` on a random 3-channel `h` x `w` image; returns (input NCHW, output NCHW).
fn run(g: &Graph, rng: &mut Rng, h: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
    let x = rng.vec(3 * h * w, -1.0, 1.0);
    let t = Tensor::from_nchw(1, 3, h, w, &x);
    let plan = GpuModel::new(ctx(), g.clone())
        .unwrap()
        .plan(1, h, w)
        .unwrap();
    plan.poison();
    let out = plan.run_with(&t.data, &[]).unwrap();
    let c = g.values[g.output].channels;
    let got = Tensor {
        data: out,
        ..Tensor::poisoned(1, c, h, w)
    };
    (x, got.to_nchw())
}

/// A 1x1 convolution's weights (ncnn: a zero storage tag, then f32 weights, then the bias).
fn conv_words(w: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut v = vec![0.0];
    v.extend_from_slice(w);
    v.extend_from_slice(bias);
    v
}

#[test]
fn eltwise_sum_with_coefficients_prod_and_max() {
    let mut rng = Rng::fresh("eltwise");
    let wts = rng.vec(9, -1.0, 1.0);
    let bias = rng.vec(3, -0.5, 0.5);
    let conv = |x: &[f32], plane: usize, o: usize, p: usize| {
        bias[o]
            + (0..3)
                .map(|i| wts[o * 3 + i] * x[i * plane + p])
                .sum::<f32>()
    };
    for (op, param) in [
        (
            "sum",
            "0=1 -23301=3,2.000000e-01,1.000000e+00,-5.000000e-01",
        ),
        ("plain-sum", "0=1"),
        ("prod", "0=0"),
        ("max", "0=2"),
    ] {
        let text = format!(
            "7767517\n4 6\nInput data 0 1 data\nSplit s 1 3 data a b c\n\
             Convolution conv 1 1 a ca 0=3 1=1 5=1 6=9\n\
             Eltwise e 3 1 ca b c out {param}\n"
        );
        let g = model(op, &text, &conv_words(&wts, &bias));
        let (h, w) = (5, 7);
        let (x, got) = run(&g, &mut rng, h, w);
        let plane = h * w;
        let want: Vec<f32> = (0..3 * plane)
            .map(|i| {
                let (o, p) = (i / plane, i % plane);
                let (a, b) = (conv(&x, plane, o, p), x[i]);
                match op {
                    "sum" => 0.2 * a + 1.0 * b - 0.5 * b,
                    "plain-sum" => a + b + b,
                    "prod" => a * b * b,
                    _ => a.max(b),
                }
            })
            .collect();
        let d = max_abs_diff(&got, &want);
        assert!(d <= TOL, "Eltwise {op}: max diff {d}");
    }
}

#[test]
fn concat_of_many_inputs_in_order() {
    let mut rng = Rng::fresh("concat");
    // Five and seven 3-channel inputs (not whole channel groups: the loader chains kernel-sized
    // concats), then a 1x1 convolution that weighs each concatenated channel differently, so
    // a wrong order or a lost input changes the result.
    for n in [2usize, 5, 7] {
        let c = 3 * n;
        let wts = rng.vec(3 * c, -1.0, 1.0);
        let bias = rng.vec(3, -0.5, 0.5);
        let names: Vec<String> = (0..n).map(|k| format!("p{k}")).collect();
        let text = format!(
            "7767517\n4 {}\nInput data 0 1 data\nSplit s 1 {n} data {}\n\
             Concat cat {n} 1 {} cat 0=0\nConvolution conv 1 1 cat out 0=3 1=1 5=1 6={}\n",
            n + 3,
            names.join(" "),
            names.join(" "),
            3 * c
        );
        let g = model(&format!("concat{n}"), &text, &conv_words(&wts, &bias));
        let concats = g
            .nodes
            .iter()
            .filter(|x| matches!(x.op, Op::Concat))
            .count();
        assert_eq!(
            concats,
            (n - 1).div_ceil(3),
            "{n} inputs, chained by at most 4"
        );
        let (h, w) = (4, 6);
        let (x, got) = run(&g, &mut rng, h, w);
        let plane = h * w;
        let want: Vec<f32> = (0..3 * plane)
            .map(|i| {
                let (o, p) = (i / plane, i % plane);
                bias[o]
                    + (0..c)
                        .map(|k| wts[o * c + k] * x[(k % 3) * plane + p])
                        .sum::<f32>()
            })
            .collect();
        let d = max_abs_diff(&got, &want);
        assert!(d <= TOL, "Concat of {n}: max diff {d}");
    }
}

#[test]
fn binary_max_and_min_layers_load() {
    let mut rng = Rng::fresh("binary-max");
    for (t, f) in [(4, f32::max as fn(f32, f32) -> f32), (5, f32::min)] {
        let text = format!(
            "7767517\n2 2\nInput data 0 1 data\nBinaryOp m 1 1 data out 0={t} 1=1 2=2.500000e-01\n"
        );
        let g = model(&format!("binary{t}"), &text, &[]);
        let (x, got) = run(&g, &mut rng, 3, 5);
        let want: Vec<f32> = x.iter().map(|&v| f(v, 0.25)).collect();
        assert_eq!(max_abs_diff(&got, &want), 0.0, "BinaryOp {t}");
    }
}

#[test]
fn hostile_blob_counts_are_errors_not_panics() {
    for line in [
        "Concat c 18446744073709551615 1 data out",
        "Concat c 1 18446744073709551615 data out",
        "Eltwise e 0 1 out 0=1",
    ] {
        let text = format!("7767517\n2 2\nInput data 0 1 data\n{line}\n");
        let dir =
            std::env::temp_dir().join(format!("refqsr-esrgan-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (p, b) = (dir.join("h.param"), dir.join("h.bin"));
        std::fs::write(&p, &text).unwrap();
        std::fs::write(&b, []).unwrap();
        let e = ncnn::load(&p, &b).expect_err(line).to_string();
        assert!(e.contains("h.param"), "{line}: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn loads_realesrgan_x4plus() {
    let m = upscayl_models();
    let g = Graph::load_ncnn(
        &m.join("realesrgan-x4plus.param"),
        &m.join("realesrgan-x4plus.bin"),
    )
    .unwrap();
    assert_eq!(g.scale(), 4);
    let convs = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_)))
        .count();
    assert_eq!(convs, 351, "every convolution of the RRDBNet");
    let widest = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Concat))
        .map(|n| n.inputs.len())
        .max();
    assert_eq!(widest, Some(5), "dense blocks concatenate five tensors");
}
