#!/usr/bin/env bash
# refqsr against ncnn (the PyPI `ncnn` package, ncnn's own runtime) on the same SPAN files,
# the same input content (centre crop of a shipped photo, or a bicubic resize when the photo is
# smaller than a size) and the same machine, in alternating rounds, so the ratios come from one
# run. Each round runs `refqsr bench` (MODES at every size) and the ncnn peer on Vulkan fp32,
# Vulkan with ncnn's fp16 defaults and the CPU (nproc threads), every tool writing the shared
# bench file format (refqsr-bench-1, BENCHMARKS.md). At the end `refqsr bench --compare` pools
# the runs of identical records across the rounds and prints one markdown table, ratios against
# ncnn Vulkan fp32 (the first file), and draws $OUT/side_by_side.svg. Then the outputs are
# compared at the first size: PSNR of refqsr fp32 against ncnn Vulkan fp32 and ncnn CPU.
#   bash benches/side_by_side.sh
# Environment (defaults): ROUNDS=3 RUNS=5 SIZES=256x256 (comma list; SIZE works too)
#   MODES=fp32,w8a8,refqsr:8-4  IMG=assets/images/astronaut.png
#   MODEL=assets/models/spanx4_ch48 (ncnn peer and the PSNR check; refqsr bench runs its
#   default model, the same shipped SPAN: give REFQSR_ARGS="--model ..." with another MODEL)
#   REFQSR_ARGS= (extra arguments of `refqsr bench`)  VENV=target/ncnn-venv
#   OUT=target/side_by_side
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
RUNS=${RUNS:-5}
SIZES=${SIZES:-${SIZE:-256x256}}
MODES=${MODES:-fp32,w8a8,refqsr:8-4}
IMG=${IMG:-assets/images/astronaut.png}
MODEL=${MODEL:-assets/models/spanx4_ch48}
REFQSR_ARGS=${REFQSR_ARGS:-}
VENV=${VENV:-target/ncnn-venv}
OUT=${OUT:-target/side_by_side}
FIRST=${SIZES%%,*}
THREADS=$(nproc)
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q ncnn numpy pillow
fi
cargo build --release -q
REFQSR=target/release/refqsr

peer() {
    "$VENV/bin/python" benches/ncnn_peer.py --param "$MODEL.param" --bin "$MODEL.bin" \
        --input "$IMG" --sizes "$SIZES" --runs "$RUNS" --warmup 1 --threads "$THREADS" "$@" >/dev/null
}
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    # shellcheck disable=SC2086 # REFQSR_ARGS is a list of arguments
    "$REFQSR" bench --modes "$MODES" --sizes "$SIZES" --runs "$RUNS" --warmup 1 \
        --json "$OUT/refqsr_$r.json" $REFQSR_ARGS >"$OUT/refqsr_$r.log"
    # the peer's raw outputs (first size) once, for the agreement check
    raw_vk=() raw_cpu=()
    if [ "$r" = 1 ]; then
        raw_vk=(--raw-out "$OUT/ncnn_vulkan_fp32.f32")
        raw_cpu=(--raw-out "$OUT/ncnn_cpu.f32")
    fi
    peer --backend vulkan --fp16 off --json "$OUT/ncnn_vulkan_fp32_$r.json" ${raw_vk[@]+"${raw_vk[@]}"}
    peer --backend vulkan --fp16 on --json "$OUT/ncnn_vulkan_fp16_$r.json"
    peer --backend cpu --fp16 off --json "$OUT/ncnn_cpu_$r.json" ${raw_cpu[@]+"${raw_cpu[@]}"}
done

files=()
for kind in ncnn_vulkan_fp32 refqsr ncnn_vulkan_fp16 ncnn_cpu; do
    for r in $(seq "$ROUNDS"); do
        files+=("$OUT/${kind}_$r.json")
    done
done
"$REFQSR" bench --compare "${files[@]}" --plot "$OUT/side_by_side.svg"

# Output agreement at the first size: refqsr fp32 through the model bench (it crops only, so
# it is skipped when the image is smaller than that size).
rm -f "$OUT/refqsr.f32"
if cargo bench -q --bench model -- "$IMG" "$FIRST" 1 --model="$MODEL.param" \
    --raw-out="$OUT/refqsr.f32" >/dev/null 2>"$OUT/model_bench.log"; then
    "$VENV/bin/python" - "$OUT" "$FIRST" <<'PY'
import sys
import numpy as np
out, size = sys.argv[1], sys.argv[2]
a = np.fromfile(f"{out}/refqsr.f32", dtype="<f4").astype(np.float64)
for name in ["ncnn_vulkan_fp32", "ncnn_cpu"]:
    b = np.fromfile(f"{out}/{name}.f32", dtype="<f4").astype(np.float64)
    if a.shape != b.shape:
        print(f"\n{size}: refqsr output has {a.size} floats, {name} {b.size}: not compared")
        continue
    mse = float(np.mean((a - b) ** 2))
    print(f"\nPSNR refqsr fp32 vs {name} output at {size} (raw float, peak 1): "
          f"{10 * np.log10(1 / max(mse, 1e-20)):.1f} dB, max abs diff {np.max(np.abs(a - b)):.2e}")
PY
else
    echo "output check skipped: the model bench failed at $FIRST (see $OUT/model_bench.log)" >&2
fi
