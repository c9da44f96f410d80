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

const PX: u32 = 4u;

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

@compute @workgroup_size(16, 4, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = params.width;
    let h = params.height;
    let pairs = (OCG + 1u) / 2u;
    let ocgp = pairs * 2u;
    let x0 = gid.x * PX;
    let y = gid.y;
    let n = gid.z / pairs;
    let og = (gid.z % pairs) * 2u;
    if x0 >= w || y >= h || n >= params.batch {
        return;
    }
    let plane = w * h;
    let r = i32(K / 2u);
    let taps = K * K;
    var acc0: array<vec4<f32>, 4>;
    var acc1: array<vec4<f32>, 4>;
    for (var ic = 0u; ic < ICG; ic++) {
        let base = (n * ICG + ic) * plane;
        let w0 = (og * ICG + ic) * taps;
        let w1 = w0 + ICG * taps;
        for (var ky = 0u; ky < K; ky++) {
            let iy = i32(y + ky) - r;
            let row_ok = iy >= 0 && iy < i32(h);
            let row = base + u32(clamp(iy, 0, i32(h) - 1)) * w;
            var v: array<vec4<f32>, 6>;
            for (var i = 0u; i < PX + K - 1u; i++) {
                let ix = i32(x0 + i) - r;
                let ok = row_ok && ix >= 0 && ix < i32(w);
                v[i] = select(vec4<f32>(0.0), src[row + u32(clamp(ix, 0, i32(w) - 1))], ok);
            }
            for (var kx = 0u; kx < K; kx++) {
                let m0 = weights[w0 + ky * K + kx];
                let m1 = weights[w1 + ky * K + kx];
                for (var p = 0u; p < PX; p++) {
                    acc0[p] += m0 * v[p + kx];
                    acc1[p] += m1 * v[p + kx];
                }
            }
        }
    }
    let groups = OCG;
    for (var p = 0u; p < PX; p++) {
        let x = x0 + p;
        if x >= w {
            break;
        }
        let i0 = ((n * groups + og) * h + y) * w + x;
        dst[i0] = finish(acc0[p], og, ocgp, i0);
        if og + 1u < OCG {
            let i1 = i0 + plane;
            dst[i1] = finish(acc1[p], og + 1u, ocgp, i1);
        }
    }
}
