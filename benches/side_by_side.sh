#!/usr/bin/env bash
# refqsr against ncnn (the PyPI `ncnn` package, ncnn's own runtime) on the same SPAN files,
# the same centre crop of a shipped photo and the same machine, in alternating rounds, so the
# ratios come from one run. Prints a markdown table and the PSNR between the two outputs.
#   bash benches/side_by_side.sh            (ROUNDS=3 RUNS=5 SIZE=256x256 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
RUNS=${RUNS:-5}
SIZE=${SIZE:-256x256}
IMG=${IMG:-assets/images/astronaut.png}
MODEL=${MODEL:-assets/models/spanx4_ch48}
VENV=${VENV:-target/ncnn-venv}
OUT=target/side_by_side
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q ncnn numpy pillow
fi
cargo build --release --bench model -q
peer() { "$VENV/bin/python" benches/ncnn_peer.py --param "$MODEL.param" --bin "$MODEL.bin" --input "$IMG" \
    --size "$SIZE" --runs "$RUNS" --warmup 1 --threads "$(nproc)" "$@" >/dev/null 2>&1; }
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    cargo bench -q --bench model -- "$IMG" "$SIZE" "$RUNS" --model="$MODEL.param" \
        --json="$OUT/refqsr_$r.json" --raw-out="$OUT/refqsr.f32" >/dev/null 2>&1
    peer --backend vulkan --fp16 off --json "$OUT/ncnn_vulkan_fp32_$r.json" --raw-out "$OUT/ncnn_vulkan_fp32.f32"
    peer --backend vulkan --fp16 on --json "$OUT/ncnn_vulkan_fp16_$r.json"
    peer --backend cpu --fp16 off --json "$OUT/ncnn_cpu_$r.json" --raw-out "$OUT/ncnn_cpu.f32"
done
"$VENV/bin/python" - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
import numpy as np
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    recs = [json.load(open(f"{out}/{name}_{r}.json")) for r in range(1, rounds + 1)]
    return recs[0], statistics.median(t for rec in recs for t in rec["times_ms"])
ref, ref_ms = load("refqsr")
print(f"SPAN {ref['model']} x{ref['scale']}, {ref['width']}x{ref['height']} input, "
      f"{rounds} rounds x {ref['runs']} runs, median of all runs")
print(f"refqsr on {ref['adapter']} ({ref['backend']}, {ref['driver']})\n")
print("| runtime | median ms | refqsr speed-up |")
print("|---|---|---|")
print(f"| refqsr fp32 (wgpu/{ref['backend']}) | {ref_ms:.0f} | 1.00x |")
for name, label in [("ncnn_vulkan_fp32", "ncnn Vulkan fp32"), ("ncnn_vulkan_fp16", "ncnn Vulkan (its fp16 defaults)"), ("ncnn_cpu", "ncnn CPU")]:
    rec, ms = load(name)
    print(f"| {label} ({rec['device']}, ncnn {rec['ncnn_version']}) | {ms:.0f} | {ms / ref_ms:.2f}x |")
a = np.fromfile(f"{out}/refqsr.f32", dtype="<f4")
for name in ["ncnn_vulkan_fp32", "ncnn_cpu"]:
    b = np.fromfile(f"{out}/{name}.f32", dtype="<f4")
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    print(f"\nPSNR refqsr vs {name} output (raw float, peak 1): {10 * np.log10(1 / max(mse, 1e-20)):.1f} dB, max abs diff {np.max(np.abs(a - b)):.2e}")
PY
