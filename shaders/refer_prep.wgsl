// RefER descriptors (RefQSR Eq. 4): every 3 x 3 cell of a feature window becomes one vector,
// the mean of its pixels' L2-normalized features, quantized to signed codes so that the cost
// volume (cost_volume.wgsl) is an integer product. The query and the reference frame both
// go through here. Output words are [n][cell][g], one cell's vector in `groups` consecutive
// words, so that the cost volume reads it contiguously.
//
// The float part (norm, mean) may round a last ulp differently from the CPU twin (the
// driver's sqrt and division are not correctly rounded), hence the twin is matched to one
// code; the quantization itself (a correctly rounded multiply, round half to even) is exact.

struct Params {
    total: u32,     // batch x cells: one invocation each
    cells: u32,     // ph * pw
    pw: u32,        // cells per row, ceil(width / 3)
    width: u32,
    height: u32,
    channels: u32,
    groups: u32,
    row: u32,       // invocations per grid row (grid_1d)
    inv_step: f32,  // qmax / clip
    qmax: f32,      // 2^(bits - 1) - 1
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> params: Params;

// 1 / count for the 1 to 9 pixels of a cell, folded by the compiler (correctly rounded, as on
// the CPU) rather than divided by the driver.
const RECIP = array<f32, 10>(0.0, 1.0, 1.0 / 2.0, 1.0 / 3.0, 1.0 / 4.0, 1.0 / 5.0,
                             1.0 / 6.0, 1.0 / 7.0, 1.0 / 8.0, 1.0 / 9.0);

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.total {
        return;
    }
    let cell = i % params.cells;
    let n = i / params.cells;
    let x0 = (cell % params.pw) * 3u;
    let y0 = (cell / params.pw) * 3u;
    let x1 = min(x0 + 3u, params.width);
    let y1 = min(y0 + 3u, params.height);
    let plane = params.width * params.height;
    let base = n * params.groups * plane;

    // The norm needs every channel group of a pixel before any group can be averaged: keep
    // the (at most nine) reciprocal norms instead of re-reading all groups per group.
    var inv: array<f32, 9>;
    var count = 0u;
    for (var y = y0; y < y1; y++) {
        for (var x = x0; x < x1; x++) {
            let p = y * params.width + x;
            var s = 0.0;
            for (var g = 0u; g < params.groups; g++) {
                let v = mask_lanes(src[base + g * plane + p], g, params.channels);
                s += dot(v, v);
            }
            // one division per pixel, not per channel; the floor keeps a zero pixel at zero
            inv[count] = 1.0 / max(sqrt(s), 1e-12);
            count++;
        }
    }

    let mean = RECIP[count];
    let lane = vec4<u32>(0u, 1u, 2u, 3u);
    for (var g = 0u; g < params.groups; g++) {
        var acc = vec4<f32>(0.0);
        var k = 0u;
        for (var y = y0; y < y1; y++) {
            for (var x = x0; x < x1; x++) {
                let v = mask_lanes(src[base + g * plane + y * params.width + x], g, params.channels);
                acc += v * inv[k];
                k++;
            }
        }
        // clamped in float so that no out-of-range float reaches the integer conversion
        let c = clamp(round(acc * mean * params.inv_step), vec4<f32>(-params.qmax), vec4<f32>(params.qmax));
        let real = vec4<u32>(g * 4u) + lane < vec4<u32>(params.channels);
        dst[i * params.groups + g] = pack4xI8(select(vec4<i32>(0), vec4<i32>(c), real));
    }
}
