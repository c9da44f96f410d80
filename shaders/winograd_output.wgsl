// Winograd F(4x4, 3x3), step 3 of 3: output transform Y = A^T M A, then the convolution's
// epilogue (bias, activation, SPAN gate or residual add), shared with conv.wgsl.
//
// One invocation per (4x4 output tile, output channel group, batch item): it reads the 36
// GEMM results of its tile, transforms rows (along x) then columns (along y) and stores the
// pixels of the tile that lie inside the image.

struct Params {
    width: u32,
    height: u32,
    tiles_x: u32,
    tiles: u32,
    ocg: u32,      // real output channel groups
    oc: u32,       // real output channels
    act: u32,      // model::Activation::code
    epi: u32,      // model::Epilogue::code
    leaky: f32,
}

@group(0) @binding(0) var<storage, read> m: array<vec4<f32>>;
// bias and PReLU slope groups, see shared/epilogue.wgsl
@group(0) @binding(1) var<storage, read> vecs: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> residual: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> params: Params;

// A^T applied to six values along one axis.
fn at(m0: vec4<f32>, m1: vec4<f32>, m2: vec4<f32>, m3: vec4<f32>, m4: vec4<f32>, m5: vec4<f32>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        m0 + m1 + m2 + m3 + m4,
        m1 - m2 + 2.0 * m3 - 2.0 * m4,
        m1 + m2 + 4.0 * m3 + 4.0 * m4,
        m1 - m2 + 8.0 * m3 - 8.0 * m4 + m5,
    );
}

// GEMM results of patch row i, transformed along x.
fn row(base: u32, i: u32) -> array<vec4<f32>, 4> {
    let step = params.ocg * params.tiles;
    let b = base + i * 6u * step;
    return at(m[b], m[b + step], m[b + 2u * step], m[b + 3u * step], m[b + 4u * step], m[b + 5u * step]);
}

fn put(n: u32, g: u32, y: u32, x0: u32, c: array<vec4<f32>, 4>) {
    if y >= params.height {
        return;
    }
    let base = ((n * params.ocg + g) * params.height + y) * params.width;
    for (var j = 0u; j < 4u; j++) {
        if x0 + j < params.width {
            dst[base + x0 + j] = epilogue(c[j], g, base + x0 + j);
        }
    }
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let valid = gid.x < params.tiles;
    let t = min(gid.x, params.tiles - 1u);
    let g = gid.y;
    let n = gid.z;
    let base = (n * 36u * params.ocg + g) * params.tiles + t;
    let a0 = row(base, 0u);
    let a1 = row(base, 1u);
    let a2 = row(base, 2u);
    let a3 = row(base, 3u);
    let a4 = row(base, 4u);
    let a5 = row(base, 5u);
    if !valid {
        return;
    }
    let y0 = t / params.tiles_x * 4u;
    let x0 = t % params.tiles_x * 4u;
    // columns of the row-transformed patch, transformed along y: c[r] = output row r
    let c0 = at(a0[0], a1[0], a2[0], a3[0], a4[0], a5[0]);
    let c1 = at(a0[1], a1[1], a2[1], a3[1], a4[1], a5[1]);
    let c2 = at(a0[2], a1[2], a2[2], a3[2], a4[2], a5[2]);
    let c3 = at(a0[3], a1[3], a2[3], a3[3], a4[3], a5[3]);
    put(n, g, y0, x0, array<vec4<f32>, 4>(c0[0], c1[0], c2[0], c3[0]));
    put(n, g, y0 + 1u, x0, array<vec4<f32>, 4>(c0[1], c1[1], c2[1], c3[1]));
    put(n, g, y0 + 2u, x0, array<vec4<f32>, 4>(c0[2], c1[2], c2[2], c3[2]));
    put(n, g, y0 + 3u, x0, array<vec4<f32>, 4>(c0[3], c1[3], c2[3], c3[3]));
}
