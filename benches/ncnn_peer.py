#!/usr/bin/env python3
"""Run a SPAN ncnn model through ncnn's own runtime (the PyPI `ncnn` package).

This is the reference peer for refqsr: it runs the same .param/.bin model that
refqsr runs, so that speed and output can be compared side by side on the same
machine. Needs only the stdlib, numpy, pillow and ncnn
(`pip install ncnn numpy pillow`; the Vulkan backend also needs the system
Vulkan loader `libvulkan1` and a driver, e.g. `mesa-vulkan-drivers`).

Model contract: input blob "data" is RGB float32 in [0,1], CHW (ncnn Mat
w=W, h=H, c=3); output blob "output" is RGB in [0,1], `scale` times larger.

Each timed run is one whole inference: build the input Mat from the numpy
array, create an extractor, ex.input + ex.extract (for Vulkan that includes the
upload and the download), and convert the output Mat to numpy. `--warmup` runs
come first and are not timed.

`--fp16 off` (default) sets use_fp16_packed/storage/arithmetic and
use_bf16_packed/storage to False so ncnn computes in fp32; `--fp16 on` leaves
ncnn's defaults (which enable fp16 wherever the device supports it).

Printed to stdout and written to --json FILE, one JSON object:
  tool         "ncnn"
  ncnn_version version of the ncnn package
  backend      "vulkan" or "cpu" (what ran; the script fails rather than
               silently falling back from vulkan to cpu)
  device       Vulkan device name for vulkan, "cpu" otherwise
  threads      CPU threads (opt.num_threads)
  fp16         "on" or "off"
  model        basename of the .param file
  width,height input size in pixels
  scale        upscale factor
  runs         number of timed runs
  times_ms     list of per-run times in milliseconds
  median_ms, min_ms, max_ms
  date         ISO 8601 date and time (UTC) of the measurement

--out writes the output as an 8-bit RGB PNG (round(clamp(x,0,1)*255));
--raw-out writes the output as raw little-endian float32, HWC, RGB.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import ncnn
import numpy as np
from PIL import Image


def load_image(path, size):
    """Load as RGB; if size=(w,h) is given, center-crop when the image is
    large enough, else resize (bicubic). Returns float32 CHW in [0,1]."""
    img = Image.open(path).convert("RGB")
    if size is not None:
        w, h = size
        if img.width >= w and img.height >= h:
            left, top = (img.width - w) // 2, (img.height - h) // 2
            img = img.crop((left, top, left + w, top + h))
        else:
            img = img.resize((w, h), Image.BICUBIC)
    hwc = np.asarray(img, dtype=np.float32) / 255.0
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def make_net(param, bin_, backend, threads, fp16):
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = backend == "vulkan"
    opt.num_threads = threads
    if fp16 == "off":
        opt.use_fp16_packed = False
        opt.use_fp16_storage = False
        opt.use_fp16_arithmetic = False
        opt.use_bf16_packed = False
        opt.use_bf16_storage = False
    if net.load_param(param) != 0 or net.load_model(bin_) != 0:
        sys.exit(f"ncnn_peer: failed to load {param} / {bin_}")
    if backend == "vulkan":
        # ncnn quietly turns use_vulkan_compute off when no GPU is usable.
        vkdev = net.vulkan_device()
        if not net.opt.use_vulkan_compute or vkdev is None:
            sys.exit("ncnn_peer: ncnn has no usable Vulkan device (it would fall back to CPU)")
        device = vkdev.info().device_name()
    else:
        device = "cpu"
    return net, device


def infer(net, chw):
    """One whole inference; returns the output as float32 CHW numpy."""
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(chw))
    ret, out = ex.extract("output")
    if ret != 0:
        sys.exit(f"ncnn_peer: extract failed ({ret})")
    return np.array(out, dtype=np.float32)


def parse_size(text):
    w, h = text.lower().split("x")
    return int(w), int(h)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--param", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--input", required=True, help="input image (PNG etc.)")
    ap.add_argument("--size", type=parse_size, help="WxH: center-crop or resize the input to this")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--backend", choices=["vulkan", "cpu"], default="vulkan")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--fp16", choices=["on", "off"], default="off")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", help="write the output as 8-bit PNG")
    ap.add_argument("--raw-out", help="write the output as raw float32 LE HWC RGB")
    ap.add_argument("--json", help="also write the JSON result to this file")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    chw = load_image(args.input, args.size)
    _, h, w = chw.shape
    net, device = make_net(args.param, args.bin, args.backend, args.threads, args.fp16)

    for _ in range(args.warmup):
        out = infer(net, chw)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = infer(net, chw)
        times.append((time.perf_counter() - t0) * 1000.0)

    if out.shape != (3, h * args.scale, w * args.scale):
        sys.exit(f"ncnn_peer: output shape {out.shape}, expected {(3, h * args.scale, w * args.scale)} "
                 "(wrong --scale?)")
    hwc = np.ascontiguousarray(out.transpose(1, 2, 0))
    if args.out:
        png = np.rint(np.clip(hwc, 0.0, 1.0) * 255.0).astype(np.uint8)
        Image.fromarray(png, "RGB").save(args.out)
    if args.raw_out:
        hwc.astype("<f4").tofile(args.raw_out)

    result = {
        "tool": "ncnn",
        "ncnn_version": ncnn.__version__,
        "backend": args.backend,
        "device": device,
        "threads": args.threads,
        "fp16": args.fp16,
        "model": os.path.basename(args.param),
        "width": w,
        "height": h,
        "scale": args.scale,
        "runs": args.runs,
        "times_ms": [round(t, 3) for t in times],
        "median_ms": round(statistics.median(times), 3),
        "min_ms": round(min(times), 3),
        "max_ms": round(max(times), 3),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    net.clear()
    del net
    if args.backend == "vulkan":
        ncnn.destroy_gpu_instance()


if __name__ == "__main__":
    main()
