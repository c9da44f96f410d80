// Depth to space (PyTorch PixelShuffle, ncnn mode 0):
// out[c][y * r + i][x * r + j] = in[c * r * r + i * r + j][y][x].

struct Params {
    width: u32,     // input width
    height: u32,    // input height
    channels: u32,  // output channels
    factor: u32,
    batch: u32,
    row: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = params.factor;
    let ow = params.width * r;
    let oh = params.height * r;
    let groups = (params.channels + 3u) / 4u;
    let in_groups = (params.channels * r * r + 3u) / 4u;
    let i = gid.y * params.row + gid.x;
    if i >= params.batch * groups * oh * ow {
        return;
    }
    let ox = i % ow;
    let oy = (i / ow) % oh;
    let g = (i / (ow * oh)) % groups;
    let n = i / (ow * oh * groups);
    let sub = (oy % r) * r + ox % r;
    let pix = (oy / r) * params.width + ox / r;
    let plane = params.width * params.height;
    var out = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let c = g * 4u + j;
        if c >= params.channels {
            break;
        }
        let sc = c * r * r + sub;
        out[j] = src[(n * in_groups + sc / 4u) * plane + pix][sc % 4u];
    }
    dst[i] = out;
}
