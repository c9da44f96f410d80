// fp32 convolution, kernel K x K (1 or 3), stride 1, "same" zero padding, fused epilogue.
//
// Register tiling: each invocation computes PX = 8 neighbouring pixels of one row for OCB = 4
// output groups (16 channels): every input vec4 it loads feeds up to 4 x 3 x 16 FMAs and
// every weight matrix 8 pixels (8 x 4 measured fastest on lavapipe among 4x4 ... 16x4). One dispatch covers one block of 4 output groups, whose
// weights are bound as a uniform buffer slice: the same for every invocation, so SIMD
// drivers load each matrix once per workgroup (scalar loads on lavapipe, the constant cache
// on GPUs). Weights are mat4x4 per (input group, tap, output group of the block):
// column j = input channel 4i+j. The body is written out by hand (no arrays indexed in
// loops) because drivers that cannot prove an index constant keep such arrays in memory.
// The accumulation order is the CPU twin's: input group, tap row, tap column.

// Everything is a runtime parameter rather than an override constant: one pipeline serves
// every convolution, and software drivers spend seconds compiling each one.
struct Params {
    width: u32,
    height: u32,
    og: u32,       // first output group of this dispatch's block
    leaky: f32,
    k: u32,        // kernel size, 1 or 3
    icg: u32,      // input channel groups
    ocg: u32,      // real output channel groups
    oc: u32,       // real output channels
    act: u32,      // model::Activation::code
    epi: u32,      // model::Epilogue::code
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
// This block's weights: 64 KiB, the smallest uniform binding limit WebGPU guarantees.
@group(0) @binding(1) var<uniform> weights: array<mat4x4<f32>, 1024>;
// bias and PReLU slope groups, see shared/epilogue.wgsl
@group(0) @binding(2) var<storage, read> vecs: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> residual: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> params: Params;

// One input pixel of row `row` (already clamped) at column x, zero outside the image.
fn load(row: u32, row_ok: bool, x: i32, w: u32) -> vec4<f32> {
    let ok = row_ok && x >= 0 && x < i32(w);
    return select(vec4<f32>(0.0), src[row + u32(clamp(x, 0, i32(w) - 1))], ok);
}

// No early return for out-of-range invocations: code after a divergent return cannot assume
// invocation 0 is active, and drivers then fall back from one uniform load per workgroup to
// one per invocation. They compute on a clamped row instead and skip the store.
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let w = params.width;
    let h = params.height;
    let x0 = gid.x * 8u;
    let valid = x0 < params.width && gid.y < params.height;
    let y = min(gid.y, params.height - 1u);
    let n = wid.z;
    let og = params.og;
    let plane = w * h;
    let k = params.k;
    let icg = params.icg;
    let ocg = params.ocg;
    let r = i32(k / 2u);
    let taps = k * k;
    let xl = i32(x0) - r;
    var a0_0 = vec4<f32>(0.0);
    var a0_1 = vec4<f32>(0.0);
    var a0_2 = vec4<f32>(0.0);
    var a0_3 = vec4<f32>(0.0);
    var a0_4 = vec4<f32>(0.0);
    var a0_5 = vec4<f32>(0.0);
    var a0_6 = vec4<f32>(0.0);
    var a0_7 = vec4<f32>(0.0);
    var a1_0 = vec4<f32>(0.0);
    var a1_1 = vec4<f32>(0.0);
    var a1_2 = vec4<f32>(0.0);
    var a1_3 = vec4<f32>(0.0);
    var a1_4 = vec4<f32>(0.0);
    var a1_5 = vec4<f32>(0.0);
    var a1_6 = vec4<f32>(0.0);
    var a1_7 = vec4<f32>(0.0);
    var a2_0 = vec4<f32>(0.0);
    var a2_1 = vec4<f32>(0.0);
    var a2_2 = vec4<f32>(0.0);
    var a2_3 = vec4<f32>(0.0);
    var a2_4 = vec4<f32>(0.0);
    var a2_5 = vec4<f32>(0.0);
    var a2_6 = vec4<f32>(0.0);
    var a2_7 = vec4<f32>(0.0);
    var a3_0 = vec4<f32>(0.0);
    var a3_1 = vec4<f32>(0.0);
    var a3_2 = vec4<f32>(0.0);
    var a3_3 = vec4<f32>(0.0);
    var a3_4 = vec4<f32>(0.0);
    var a3_5 = vec4<f32>(0.0);
    var a3_6 = vec4<f32>(0.0);
    var a3_7 = vec4<f32>(0.0);
    for (var ic = 0u; ic < icg; ic++) {
        let base = (n * icg + ic) * plane;
        let wb = ic * taps * 4u;
        for (var ky = 0u; ky < k; ky++) {
            let iy = i32(y + ky) - r;
            let row_ok = iy >= 0 && iy < i32(h);
            let row = base + u32(clamp(iy, 0, i32(h) - 1)) * w;
            let v0 = load(row, row_ok, xl + 0, w);
            let v1 = load(row, row_ok, xl + 1, w);
            let v2 = load(row, row_ok, xl + 2, w);
            let v3 = load(row, row_ok, xl + 3, w);
            let v4 = load(row, row_ok, xl + 4, w);
            let v5 = load(row, row_ok, xl + 5, w);
            let v6 = load(row, row_ok, xl + 6, w);
            let v7 = load(row, row_ok, xl + 7, w);
            {
                let m0 = weights[wb + (ky * k + 0u) * 4u + 0u];
                let m1 = weights[wb + (ky * k + 0u) * 4u + 1u];
                let m2 = weights[wb + (ky * k + 0u) * 4u + 2u];
                let m3 = weights[wb + (ky * k + 0u) * 4u + 3u];
                a0_0 += m0 * v0;
                a0_1 += m0 * v1;
                a0_2 += m0 * v2;
                a0_3 += m0 * v3;
                a0_4 += m0 * v4;
                a0_5 += m0 * v5;
                a0_6 += m0 * v6;
                a0_7 += m0 * v7;
                a1_0 += m1 * v0;
                a1_1 += m1 * v1;
                a1_2 += m1 * v2;
                a1_3 += m1 * v3;
                a1_4 += m1 * v4;
                a1_5 += m1 * v5;
                a1_6 += m1 * v6;
                a1_7 += m1 * v7;
                a2_0 += m2 * v0;
                a2_1 += m2 * v1;
                a2_2 += m2 * v2;
                a2_3 += m2 * v3;
                a2_4 += m2 * v4;
                a2_5 += m2 * v5;
                a2_6 += m2 * v6;
                a2_7 += m2 * v7;
                a3_0 += m3 * v0;
                a3_1 += m3 * v1;
                a3_2 += m3 * v2;
                a3_3 += m3 * v3;
                a3_4 += m3 * v4;
                a3_5 += m3 * v5;
                a3_6 += m3 * v6;
                a3_7 += m3 * v7;
            }
            if k == 3u {
                let v8 = load(row, row_ok, xl + 8, w);
                let v9 = load(row, row_ok, xl + 9, w);
                {
                    let m0 = weights[wb + (ky * k + 1u) * 4u + 0u];
                    let m1 = weights[wb + (ky * k + 1u) * 4u + 1u];
                    let m2 = weights[wb + (ky * k + 1u) * 4u + 2u];
                    let m3 = weights[wb + (ky * k + 1u) * 4u + 3u];
                    a0_0 += m0 * v1;
                    a0_1 += m0 * v2;
                    a0_2 += m0 * v3;
                    a0_3 += m0 * v4;
                    a0_4 += m0 * v5;
                    a0_5 += m0 * v6;
                    a0_6 += m0 * v7;
                    a0_7 += m0 * v8;
                    a1_0 += m1 * v1;
                    a1_1 += m1 * v2;
                    a1_2 += m1 * v3;
                    a1_3 += m1 * v4;
                    a1_4 += m1 * v5;
                    a1_5 += m1 * v6;
                    a1_6 += m1 * v7;
                    a1_7 += m1 * v8;
                    a2_0 += m2 * v1;
                    a2_1 += m2 * v2;
                    a2_2 += m2 * v3;
                    a2_3 += m2 * v4;
                    a2_4 += m2 * v5;
                    a2_5 += m2 * v6;
                    a2_6 += m2 * v7;
                    a2_7 += m2 * v8;
                    a3_0 += m3 * v1;
                    a3_1 += m3 * v2;
                    a3_2 += m3 * v3;
                    a3_3 += m3 * v4;
                    a3_4 += m3 * v5;
                    a3_5 += m3 * v6;
                    a3_6 += m3 * v7;
                    a3_7 += m3 * v8;
                }
                {
                    let m0 = weights[wb + (ky * k + 2u) * 4u + 0u];
                    let m1 = weights[wb + (ky * k + 2u) * 4u + 1u];
                    let m2 = weights[wb + (ky * k + 2u) * 4u + 2u];
                    let m3 = weights[wb + (ky * k + 2u) * 4u + 3u];
                    a0_0 += m0 * v2;
                    a0_1 += m0 * v3;
                    a0_2 += m0 * v4;
                    a0_3 += m0 * v5;
                    a0_4 += m0 * v6;
                    a0_5 += m0 * v7;
                    a0_6 += m0 * v8;
                    a0_7 += m0 * v9;
                    a1_0 += m1 * v2;
                    a1_1 += m1 * v3;
                    a1_2 += m1 * v4;
                    a1_3 += m1 * v5;
                    a1_4 += m1 * v6;
                    a1_5 += m1 * v7;
                    a1_6 += m1 * v8;
                    a1_7 += m1 * v9;
                    a2_0 += m2 * v2;
                    a2_1 += m2 * v3;
                    a2_2 += m2 * v4;
                    a2_3 += m2 * v5;
                    a2_4 += m2 * v6;
                    a2_5 += m2 * v7;
                    a2_6 += m2 * v8;
                    a2_7 += m2 * v9;
                    a3_0 += m3 * v2;
                    a3_1 += m3 * v3;
                    a3_2 += m3 * v4;
                    a3_3 += m3 * v5;
                    a3_4 += m3 * v6;
                    a3_5 += m3 * v7;
                    a3_6 += m3 * v8;
                    a3_7 += m3 * v9;
                }
            }
        }
    }
    if !valid {
        return;
    }
    let i0 = ((n * ocg + og) * h + y) * w + x0;
    if x0 + 0u < w {
        dst[i0 + 0u + 0u * plane] = epilogue(a0_0, og + 0u, i0 + 0u + 0u * plane);
        if og + 1u < ocg { dst[i0 + 0u + 1u * plane] = epilogue(a1_0, og + 1u, i0 + 0u + 1u * plane); }
        if og + 2u < ocg { dst[i0 + 0u + 2u * plane] = epilogue(a2_0, og + 2u, i0 + 0u + 2u * plane); }
        if og + 3u < ocg { dst[i0 + 0u + 3u * plane] = epilogue(a3_0, og + 3u, i0 + 0u + 3u * plane); }
    }
    if x0 + 1u < w {
        dst[i0 + 1u + 0u * plane] = epilogue(a0_1, og + 0u, i0 + 1u + 0u * plane);
        if og + 1u < ocg { dst[i0 + 1u + 1u * plane] = epilogue(a1_1, og + 1u, i0 + 1u + 1u * plane); }
        if og + 2u < ocg { dst[i0 + 1u + 2u * plane] = epilogue(a2_1, og + 2u, i0 + 1u + 2u * plane); }
        if og + 3u < ocg { dst[i0 + 1u + 3u * plane] = epilogue(a3_1, og + 3u, i0 + 1u + 3u * plane); }
    }
    if x0 + 2u < w {
        dst[i0 + 2u + 0u * plane] = epilogue(a0_2, og + 0u, i0 + 2u + 0u * plane);
        if og + 1u < ocg { dst[i0 + 2u + 1u * plane] = epilogue(a1_2, og + 1u, i0 + 2u + 1u * plane); }
        if og + 2u < ocg { dst[i0 + 2u + 2u * plane] = epilogue(a2_2, og + 2u, i0 + 2u + 2u * plane); }
        if og + 3u < ocg { dst[i0 + 2u + 3u * plane] = epilogue(a3_2, og + 3u, i0 + 2u + 3u * plane); }
    }
    if x0 + 3u < w {
        dst[i0 + 3u + 0u * plane] = epilogue(a0_3, og + 0u, i0 + 3u + 0u * plane);
        if og + 1u < ocg { dst[i0 + 3u + 1u * plane] = epilogue(a1_3, og + 1u, i0 + 3u + 1u * plane); }
        if og + 2u < ocg { dst[i0 + 3u + 2u * plane] = epilogue(a2_3, og + 2u, i0 + 3u + 2u * plane); }
        if og + 3u < ocg { dst[i0 + 3u + 3u * plane] = epilogue(a3_3, og + 3u, i0 + 3u + 3u * plane); }
    }
    if x0 + 4u < w {
        dst[i0 + 4u + 0u * plane] = epilogue(a0_4, og + 0u, i0 + 4u + 0u * plane);
        if og + 1u < ocg { dst[i0 + 4u + 1u * plane] = epilogue(a1_4, og + 1u, i0 + 4u + 1u * plane); }
        if og + 2u < ocg { dst[i0 + 4u + 2u * plane] = epilogue(a2_4, og + 2u, i0 + 4u + 2u * plane); }
        if og + 3u < ocg { dst[i0 + 4u + 3u * plane] = epilogue(a3_4, og + 3u, i0 + 4u + 3u * plane); }
    }
    if x0 + 5u < w {
        dst[i0 + 5u + 0u * plane] = epilogue(a0_5, og + 0u, i0 + 5u + 0u * plane);
        if og + 1u < ocg { dst[i0 + 5u + 1u * plane] = epilogue(a1_5, og + 1u, i0 + 5u + 1u * plane); }
        if og + 2u < ocg { dst[i0 + 5u + 2u * plane] = epilogue(a2_5, og + 2u, i0 + 5u + 2u * plane); }
        if og + 3u < ocg { dst[i0 + 5u + 3u * plane] = epilogue(a3_5, og + 3u, i0 + 5u + 3u * plane); }
    }
    if x0 + 6u < w {
        dst[i0 + 6u + 0u * plane] = epilogue(a0_6, og + 0u, i0 + 6u + 0u * plane);
        if og + 1u < ocg { dst[i0 + 6u + 1u * plane] = epilogue(a1_6, og + 1u, i0 + 6u + 1u * plane); }
        if og + 2u < ocg { dst[i0 + 6u + 2u * plane] = epilogue(a2_6, og + 2u, i0 + 6u + 2u * plane); }
        if og + 3u < ocg { dst[i0 + 6u + 3u * plane] = epilogue(a3_6, og + 3u, i0 + 6u + 3u * plane); }
    }
    if x0 + 7u < w {
        dst[i0 + 7u + 0u * plane] = epilogue(a0_7, og + 0u, i0 + 7u + 0u * plane);
        if og + 1u < ocg { dst[i0 + 7u + 1u * plane] = epilogue(a1_7, og + 1u, i0 + 7u + 1u * plane); }
        if og + 2u < ocg { dst[i0 + 7u + 2u * plane] = epilogue(a2_7, og + 2u, i0 + 7u + 2u * plane); }
        if og + 3u < ocg { dst[i0 + 7u + 3u * plane] = epilogue(a3_7, og + 3u, i0 + 7u + 3u * plane); }
    }
}
