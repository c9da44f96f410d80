// fp32 convolution, kernel K x K (1 or 3), stride 1, "same" zero padding, fused epilogue.
//
// Register tiling: each invocation computes PX = 4 neighbouring pixels of one row for two
// output groups (8 channels), so every input vec4 it loads feeds 2 x 16 FMAs per tap it
// covers and every weight matrix feeds 4 pixels. All invocations of a workgroup share their
// output groups, so weight loads are uniform (scalar loads on SIMD CPUs, broadcast on GPUs).
// Weights are mat4x4 per (output group, input group, tap): column j = input channel 4i+j.

override K: u32 = 3u;
override ICG: u32 = 1u;      // input channel groups
override OCG: u32 = 1u;      // real output channel groups (weights are padded to even)
override OC: u32 = 4u;       // real output channels
override ACT: u32 = 0u;      // model::Activation::code
override EPI: u32 = 0u;      // model::Epilogue::code

struct Params {
    width: u32,
    height: u32,
    batch: u32,
    leaky: f32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> weights: array<mat4x4<f32>>;
// bias groups [0, OCGP), then PReLU slope groups [OCGP, 2 OCGP)
@group(0) @binding(2) var<storage, read> vecs: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> residual: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> params: Params;

const PX: u32 = 4u; // pixels per invocation (written out in main)

fn finish(acc: vec4<f32>, g: u32, ocgp: u32, index: u32) -> vec4<f32> {
    let x = acc + vecs[g];
    var y = activate(x, ACT, params.leaky, vecs[ocgp + g]);
    if EPI == 1u {
        y = (x + residual[index]) * (sigmoid4(x) - 0.5);
    } else if EPI == 2u {
        y = y + residual[index];
    }
    return mask_lanes(y, g, OC);
}

// Loads one input pixel of row `row` (already clamped) at column x, zero outside the image.
fn load(row: u32, row_ok: bool, x: i32, w: u32) -> vec4<f32> {
    let ok = row_ok && x >= 0 && x < i32(w);
    return select(vec4<f32>(0.0), src[row + u32(clamp(x, 0, i32(w) - 1))], ok);
}

// Written out by hand rather than with arrays and loops: drivers that cannot prove an array
// index constant (lavapipe among them) keep such arrays in memory, which costs more than the
// arithmetic. The accumulation order is the CPU twin's: input group, tap row, tap column.
@compute @workgroup_size(16, 4, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let w = params.width;
    let h = params.height;
    let pairs = (OCG + 1u) / 2u;
    let ocgp = pairs * 2u;
    let x0 = gid.x * PX;
    // No early return for out-of-range invocations: code after a divergent return cannot
    // assume invocation 0 is active, and drivers then fall back from one uniform weight load
    // per workgroup to one load per invocation (lavapipe: 20x slower). They compute on a
    // clamped row instead and skip the store.
    let valid = x0 < params.width && gid.y < params.height;
    let y = min(gid.y, params.height - 1u);
    // From the workgroup id, not the invocation id: the same for the whole workgroup, which
    // lets drivers load the weights once per workgroup (scalar loads on SIMD CPUs).
    let n = wid.z / pairs;
    let og = (wid.z % pairs) * 2u;
    let plane = w * h;
    let r = i32(K / 2u);
    let taps = K * K;
    let xl = i32(x0) - r;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var b0 = vec4<f32>(0.0);
    var b1 = vec4<f32>(0.0);
    var b2 = vec4<f32>(0.0);
    var b3 = vec4<f32>(0.0);
    for (var ic = 0u; ic < ICG; ic++) {
        let base = (n * ICG + ic) * plane;
        let w0 = (og * ICG + ic) * taps;
        let w1 = w0 + ICG * taps;
        for (var ky = 0u; ky < K; ky++) {
            let iy = i32(y + ky) - r;
            let row_ok = iy >= 0 && iy < i32(h);
            let row = base + u32(clamp(iy, 0, i32(h) - 1)) * w;
            let v0 = load(row, row_ok, xl, w);
            let v1 = load(row, row_ok, xl + 1, w);
            let v2 = load(row, row_ok, xl + 2, w);
            let v3 = load(row, row_ok, xl + 3, w);
            var m = weights[w0 + ky * K];
            var q = weights[w1 + ky * K];
            a0 += m * v0;
            a1 += m * v1;
            a2 += m * v2;
            a3 += m * v3;
            b0 += q * v0;
            b1 += q * v1;
            b2 += q * v2;
            b3 += q * v3;
            if K == 3u {
                let v4 = load(row, row_ok, xl + 4, w);
                let v5 = load(row, row_ok, xl + 5, w);
                m = weights[w0 + ky * K + 1u];
                q = weights[w1 + ky * K + 1u];
                a0 += m * v1;
                a1 += m * v2;
                a2 += m * v3;
                a3 += m * v4;
                b0 += q * v1;
                b1 += q * v2;
                b2 += q * v3;
                b3 += q * v4;
                m = weights[w0 + ky * K + 2u];
                q = weights[w1 + ky * K + 2u];
                a0 += m * v2;
                a1 += m * v3;
                a2 += m * v4;
                a3 += m * v5;
                b0 += q * v2;
                b1 += q * v3;
                b2 += q * v4;
                b3 += q * v5;
            }
        }
    }
    if !valid {
        return;
    }
    let i0 = ((n * OCG + og) * h + y) * w + x0;
    let more = og + 1u < OCG;
    store(a0, b0, x0, w, og, ocgp, i0, plane, more);
    store(a1, b1, x0 + 1u, w, og, ocgp, i0 + 1u, plane, more);
    store(a2, b2, x0 + 2u, w, og, ocgp, i0 + 2u, plane, more);
    store(a3, b3, x0 + 3u, w, og, ocgp, i0 + 3u, plane, more);
}

fn store(a: vec4<f32>, b: vec4<f32>, x: u32, w: u32, og: u32, ocgp: u32, i: u32, plane: u32, more: bool) {
    if x >= w {
        return;
    }
    dst[i] = finish(a, og, ocgp, i);
    if more {
        dst[i + plane] = finish(b, og + 1u, ocgp, i + plane);
    }
}
