// RefER matching (RefQSR Eqs. 6-7 at inference): for every query cell, the reference cell of
// highest similarity, idx[n][i] = argmax over j of E[n][i][j]. Training needs the
// differentiable soft-argmax; inference takes the hard argmax, which also keeps the result an
// exact integer function of E. Ties go to the smallest j, whatever the reduction order, so
// the CPU twin's plain scan gives the same index.
//
// One workgroup per row of E: its 64 invocations scan the row with a stride of 64 (adjacent
// invocations read adjacent words) and then reduce their 64 candidates in workgroup memory.

const WG: u32 = 64u;

struct Params {
    rows: u32,      // batch x cells
    cells: u32,     // row length P
    row: u32,       // workgroups per grid row (grid_1d)
}

@group(0) @binding(0) var<storage, read> e: array<i32>;
@group(0) @binding(1) var<storage, read_write> idx: array<u32>;
@group(0) @binding(2) var<uniform> params: Params;

var<workgroup> best_v: array<i32, 64>;
var<workgroup> best_j: array<u32, 64>;

// Whether candidate (v, j) beats (bv, bj): larger, or as large and earlier. The sentinel
// index 0xffffffff of an empty candidate loses every tie.
fn beats(v: i32, j: u32, bv: i32, bj: u32) -> bool {
    return v > bv || (v == bv && j < bj);
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = wid.y * params.row + wid.x;
    // the same for the whole workgroup, so the barriers below stay in uniform control flow
    if r >= params.rows {
        return;
    }
    let l = lid.x;
    let base = r * params.cells;
    var bv = -2147483647i - 1i;
    var bj = 0xffffffffu;
    for (var j = l; j < params.cells; j += WG) {
        let v = e[base + j];
        if beats(v, j, bv, bj) {
            bv = v;
            bj = j;
        }
    }
    best_v[l] = bv;
    best_j[l] = bj;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if l < s {
            let v = best_v[l + s];
            let j = best_j[l + s];
            if beats(v, j, best_v[l], best_j[l]) {
                best_v[l] = v;
                best_j[l] = j;
            }
        }
        workgroupBarrier();
    }
    if l == 0u {
        idx[r] = best_j[0];
    }
}
