// Winograd F(4x4, 3x3), step 1 of 3: input transform V = B^T d B.
//
// One invocation per (4x4 output tile, input channel group, batch item): it reads the 6x6
// input patch around its tile (zero outside the image: the convolution's "same" padding),
// transforms rows (along x) and then columns (along y), and writes the 36 coefficients to
// V[((n * 36 + pos) * vgroups + g0 + ic) * tiles + tile], pos = 6 * row + column, so that the
// GEMM step reads consecutive tiles. V may be wider than this input (vgroups >= g0 + icg): the
// inputs of a concatenation are transformed each into its own slice of channel groups, once,
// and every convolution over a prefix of them reads the shared V (exec.rs, `SharedInputs`). The 3x3 convolution then costs 36 instead of 144 multiplies per
// 4x4 tile and channel pair, which matters most where loads are expensive (lavapipe).

struct Params {
    width: u32,
    height: u32,
    tiles_x: u32,
    tiles: u32,    // tiles per image
    icg: u32,      // input channel groups
    vgroups: u32,  // channel groups per position in V
    g0: u32,       // first channel group of V this input fills
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> v: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> params: Params;

// B^T applied to six values along one axis.
fn bt(d0: vec4<f32>, d1: vec4<f32>, d2: vec4<f32>, d3: vec4<f32>, d4: vec4<f32>, d5: vec4<f32>) -> array<vec4<f32>, 6> {
    return array<vec4<f32>, 6>(
        4.0 * d0 - 5.0 * d2 + d4,
        -4.0 * d1 - 4.0 * d2 + d3 + d4,
        4.0 * d1 - 4.0 * d2 - d3 + d4,
        -2.0 * d1 - d2 + 2.0 * d3 + d4,
        2.0 * d1 - d2 - 2.0 * d3 + d4,
        4.0 * d1 - 5.0 * d3 + d5,
    );
}

fn px(base: u32, y: i32, x: i32) -> vec4<f32> {
    let ok = y >= 0 && y < i32(params.height) && x >= 0 && x < i32(params.width);
    let yc = u32(clamp(y, 0, i32(params.height) - 1));
    let xc = u32(clamp(x, 0, i32(params.width) - 1));
    return select(vec4<f32>(0.0), src[base + yc * params.width + xc], ok);
}

// Load input row y of the patch and transform it along x.
fn row(base: u32, y: i32, x0: i32) -> array<vec4<f32>, 6> {
    return bt(px(base, y, x0), px(base, y, x0 + 1), px(base, y, x0 + 2), px(base, y, x0 + 3), px(base, y, x0 + 4), px(base, y, x0 + 5));
}

fn put(out: u32, column: u32, c: array<vec4<f32>, 6>) {
    let step = params.vgroups * params.tiles;
    for (var i = 0u; i < 6u; i++) {
        v[out + (i * 6u + column) * step] = c[i];
    }
}

// No early return: see conv.wgsl (invocation 0 must stay active for uniform loads).
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let valid = gid.x < params.tiles;
    let t = min(gid.x, params.tiles - 1u);
    let ic = gid.y;
    let n = gid.z;
    let base = (n * params.icg + ic) * params.width * params.height;
    let y0 = i32(t / params.tiles_x * 4u) - 1;
    let x0 = i32(t % params.tiles_x * 4u) - 1;
    let r0 = row(base, y0, x0);
    let r1 = row(base, y0 + 1, x0);
    let r2 = row(base, y0 + 2, x0);
    let r3 = row(base, y0 + 3, x0);
    let r4 = row(base, y0 + 4, x0);
    let r5 = row(base, y0 + 5, x0);
    if !valid {
        return;
    }
    let out = (n * 36u * params.vgroups + params.g0 + ic) * params.tiles + t;
    put(out, 0u, bt(r0[0], r1[0], r2[0], r3[0], r4[0], r5[0]));
    put(out, 1u, bt(r0[1], r1[1], r2[1], r3[1], r4[1], r5[1]));
    put(out, 2u, bt(r0[2], r1[2], r2[2], r3[2], r4[2], r5[2]));
    put(out, 3u, bt(r0[3], r1[3], r2[3], r3[3], r4[3], r5[3]));
    put(out, 4u, bt(r0[4], r1[4], r2[4], r3[4], r4[4], r5[4]));
    put(out, 5u, bt(r0[5], r1[5], r2[5], r3[5], r4[5], r5[5]));
}
