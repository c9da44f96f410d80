// RefER alignment error (RefQSR Eqs. 6-7 at inference): the reference features warped onto
// the query by the matches of argmax.wgsl, subtracted from the query features,
// D = Fq - warp(Fr). Each cell's match is a flow of 3 x (cell offset) pixels; the cell flows
// are interpolated bilinearly to full resolution (cell centres at pixels 3 c + 1) and Fr is sampled
// bilinearly there, with coordinates clamped to the window (border clamp).
//
// Interpolation is written a + (b - a) t: equal end points give a exactly, so a uniform flow
// and whole-pixel sample positions reproduce shifted features exactly (the tests check a
// 3-pixel shift gives D = 0). Float results may differ from the CPU twin in the last ulps
// (the driver may fuse multiply-adds).

struct Params {
    total: u32,     // batch x plane: one invocation per pixel, looping over channel groups
    width: u32,
    height: u32,
    groups: u32,
    pw: u32,        // cells per row
    ph: u32,        // cell rows
    row: u32,       // invocations per grid row (grid_1d)
}

@group(0) @binding(0) var<storage, read> fq: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> fr: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> params: Params;

// A multiply, correctly rounded, in place of the driver's approximate division by 3.
const THIRD: f32 = 1.0 / 3.0;

// The two neighbours along one axis of continuous coordinate t clamped to [0, last], and the
// weight of the second.
struct Tap {
    lo: u32,
    hi: u32,
    a: f32,
}

fn tap(t: f32, last: u32) -> Tap {
    let c = min(max(t, 0.0), f32(last));
    let f = floor(c);
    let lo = u32(f);
    return Tap(lo, min(lo + 1u, last), c - f);
}

fn lerp2(a: vec2<f32>, b: vec2<f32>, t: f32) -> vec2<f32> {
    return a + (b - a) * t;
}

fn lerp4(a: vec4<f32>, b: vec4<f32>, t: f32) -> vec4<f32> {
    return a + (b - a) * t;
}

// Flow in pixels of cell (cx, cy): 3 x the offset to its match. An index past the grid (not
// one argmax writes) is clamped rather than read out of bounds.
fn cell_flow(n: u32, cx: u32, cy: u32) -> vec2<f32> {
    let cells = params.pw * params.ph;
    let j = min(idx[n * cells + cy * params.pw + cx], cells - 1u);
    let dx = i32(j % params.pw) - i32(cx);
    let dy = i32(j / params.pw) - i32(cy);
    return 3.0 * vec2<f32>(f32(dx), f32(dy));
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.total {
        return;
    }
    let w = params.width;
    let plane = w * params.height;
    let n = i / plane;
    let p = i % plane;
    let x = f32(p % w);
    let y = f32(p / w);

    // the flow and the sample position are shared by all channel groups
    // Cell coordinate (x + 0.5) / 3 - 0.5, written (x - 1) / 3: a single correctly rounded
    // multiply that no driver can fuse, so the interpolation weights are those of the CPU
    // twin bit for bit (a weight off by an ulp, times flows tens of pixels apart, would move
    // the sample by more than the test's tolerance).
    let u = tap((x - 1.0) * THIRD, params.pw - 1u);
    let v = tap((y - 1.0) * THIRD, params.ph - 1u);
    let top = lerp2(cell_flow(n, u.lo, v.lo), cell_flow(n, u.hi, v.lo), u.a);
    let bottom = lerp2(cell_flow(n, u.lo, v.hi), cell_flow(n, u.hi, v.hi), u.a);
    let flow = lerp2(top, bottom, v.a);
    let sx = tap(x + flow.x, w - 1u);
    let sy = tap(y + flow.y, params.height - 1u);

    for (var g = 0u; g < params.groups; g++) {
        let base = (n * params.groups + g) * plane;
        let r0 = base + sy.lo * w;
        let r1 = base + sy.hi * w;
        let upper = lerp4(fr[r0 + sx.lo], fr[r0 + sx.hi], sx.a);
        let lower = lerp4(fr[r1 + sx.lo], fr[r1 + sx.hi], sx.a);
        dst[base + p] = fq[base + p] - lerp4(upper, lower, sy.a);
    }
}
