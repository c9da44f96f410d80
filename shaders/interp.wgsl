// Nearest-neighbour upscaling by an integer factor: out[c][y][x] = in[c][y / f][x / f].

struct Params {
    width: u32,   // input width
    height: u32,  // input height
    factor: u32,
    total: u32,   // output vec4 elements (batch x groups x out plane)
    row: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.total {
        return;
    }
    let f = params.factor;
    let ow = params.width * f;
    let oplane = ow * params.height * f;
    let ox = i % ow;
    let oy = (i / ow) % (params.height * f);
    let ng = i / oplane;
    dst[i] = src[(ng * params.height + oy / f) * params.width + ox / f];
}
