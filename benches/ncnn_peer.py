#!/usr/bin/env python3
"""Run a SPAN ncnn model through ncnn's own runtime (the PyPI `ncnn` package).

This is the reference peer for refqsr: it runs the same .param/.bin model that
refqsr runs, so that speed and output can be compared side by side on the same
machine. Needs only the stdlib, numpy, pillow and ncnn
(`pip install ncnn numpy pillow`; the Vulkan backend also needs the system
Vulkan loader `libvulkan1` and a driver, e.g. `mesa-vulkan-drivers`).

    python benches/ncnn_peer.py --param M.param --bin M.bin --input IMG \\
        --sizes 256x256,960x540 [--backend vulkan|cpu] [--fp16 off|on] \\
        [--runs 5] [--warmup 1] [--threads N] [--json FILE] [--out PNG] [--raw-out F32]

Model contract: input blob "data" is RGB float32 in [0,1], CHW (ncnn Mat
w=W, h=H, c=3); output blob "output" is RGB in [0,1], `--scale` times larger.

Input content, per size WxH (the policy `refqsr bench` uses too): the centre
crop of the image when the image is at least WxH, else the whole image resized
to WxH (bicubic). Without --sizes/--size the image is used as it is.

Every size is measured in one invocation with one loaded net. Per size,
`--warmup` untimed runs come first, then `--runs` timed ones. Each timed run
is one whole inference: build the input Mat from the numpy array, create an
extractor, ex.input + ex.extract (for Vulkan that includes the upload and the
download), and convert the output Mat to numpy.

`--backend vulkan` fails rather than silently falling back to the CPU when
ncnn has no usable Vulkan device. `--fp16 off` (default) sets
use_fp16_packed/storage/arithmetic and use_bf16_packed/storage to False so
ncnn computes in fp32 (mode "ncnn-fp32"); `--fp16 on` leaves ncnn's defaults,
which enable fp16 wherever the device supports it (mode "ncnn-fp16").

Output: one JSON object in the shared bench file format `refqsr-bench-1`
(schema, tool "ncnn", tool_version, date, partial, results: one RESULT per
size), exactly as documented in BENCHMARKS.md, section "The bench file format
(refqsr-bench-1)", so `refqsr bench --compare` reads it next to refqsr's own
files. ncnn-specific choices within that format:
  adapter.name         Vulkan device name, or "cpu" for the CPU backend
  adapter.backend      "Vulkan" or "Cpu"
  adapter.vendor       PCI vendor id as hex ("0x10de") from ncnn's GpuInfo,
                       null on the CPU backend
  adapter.device_type  from ncnn's GpuInfo type (DiscreteGpu, IntegratedGpu,
                       VirtualGpu, Cpu, Other); "Cpu" on the CPU backend
  adapter.driver, driver_info, int_dot   null (ncnn does not report them)
  adapter.threads      opt.num_threads (--threads)
  model                stem of the .param file, e.g. "spanx4_ch48"
  mode                 "ncnn-fp32" (--fp16 off) or "ncnn-fp16" (--fp16 on)
  gops, peak_share, peak, memory_bytes, stages           null
`partial` is true when a size failed or the run was interrupted; the sizes
that completed are still written, and the exit status is non-zero.
The JSON goes to stdout, and with --json FILE also to FILE (written
atomically: a temporary file in the same folder, then os.replace). A one-line
summary per size goes to stderr.

--out writes the output of the FIRST size as an 8-bit RGB PNG
(round(clamp(x,0,1)*255)); --raw-out writes it as raw little-endian float32,
HWC, RGB (the layout of `cargo bench --bench model -- ... --raw-out=FILE`).
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

import ncnn
import numpy as np
from PIL import Image

SCHEMA = "refqsr-bench-1"
# ncnn's GpuInfo::type(): 0 discrete, 1 integrated, 2 virtual, 3 cpu, -1 other
DEVICE_TYPES = {0: "DiscreteGpu", 1: "IntegratedGpu", 2: "VirtualGpu", 3: "Cpu"}


class PeerError(Exception):
    """A failure worth one clear line on stderr."""


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_readable(path, what):
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise PeerError(f"cannot read {what} {path}: {e.strerror or e}") from None


def open_image(path):
    check_readable(path, "input image")
    try:
        img = Image.open(path)
        img.load()
        return img.convert("RGB")
    except Exception as e:  # PIL raises several types for bad files
        raise PeerError(f"cannot decode input image {path}: {e}") from None


def fit_image(img, size):
    """Centre crop to size=(w,h) when the image is large enough, else resize
    (bicubic); None keeps the image. Returns float32 CHW in [0,1]."""
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
    """Load the net; returns (net, adapter) with adapter the RESULT's adapter object."""
    check_readable(param, "model")
    check_readable(bin_, "model weights")
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
    if net.load_param(param) != 0:
        raise PeerError(f"ncnn cannot load model {param}")
    if net.load_model(bin_) != 0:
        raise PeerError(f"ncnn cannot load model weights {bin_} (for {param})")
    adapter = {
        "name": "cpu",
        "backend": "Cpu",
        "vendor": None,
        "device_type": "Cpu",
        "driver": None,
        "driver_info": None,
        "int_dot": None,
        "threads": threads,
    }
    if backend == "vulkan":
        # ncnn quietly turns use_vulkan_compute off when no GPU is usable.
        vkdev = net.vulkan_device()
        if not net.opt.use_vulkan_compute or vkdev is None:
            raise PeerError("ncnn has no usable Vulkan device (it would fall back to CPU)")
        info = vkdev.info()
        adapter["name"] = info.device_name()
        adapter["backend"] = "Vulkan"
        try:
            adapter["vendor"] = f"0x{int(info.vendor_id()):04x}"
        except (AttributeError, TypeError, ValueError):
            adapter["vendor"] = None
        try:
            adapter["device_type"] = DEVICE_TYPES.get(int(info.type()), "Other")
        except (AttributeError, TypeError, ValueError):
            adapter["device_type"] = None
    return net, adapter


def infer(net, chw):
    """One whole inference; returns the output as float32 CHW numpy."""
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(chw))
    ret, out = ex.extract("output")
    if ret != 0:
        raise PeerError(f"ncnn extract failed ({ret})")
    return np.array(out, dtype=np.float32)


def parse_size(text):
    try:
        w, h = text.strip().lower().split("x")
        w, h = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WxH") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} is empty")
    return w, h


def parse_sizes(text):
    return [parse_size(t) for t in text.split(",") if t.strip()]


def measure(net, chw, args):
    """Warm-up and timed runs on one input; returns (times_ms, last output CHW)."""
    out = None
    for _ in range(args.warmup):
        out = infer(net, chw)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = infer(net, chw)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times, out


def write_atomic(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ncnn_peer.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--param", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--input", required=True, help="input image (PNG etc.)")
    ap.add_argument("--sizes", type=parse_sizes,
                    help="comma list of WxH: centre-crop (or resize) the input to each")
    ap.add_argument("--size", type=parse_size, help="one WxH (alias of --sizes with one size)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--backend", choices=["vulkan", "cpu"], default="vulkan")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--fp16", choices=["on", "off"], default="off")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", help="write the first size's output as 8-bit PNG")
    ap.add_argument("--raw-out", help="write the first size's output as raw float32 LE HWC RGB")
    ap.add_argument("--json", help="also write the JSON document to this file")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.warmup < 0:
        ap.error("--warmup must not be negative")
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    if args.sizes is not None and args.size is not None:
        ap.error("give --sizes or --size, not both")
    sizes = args.sizes if args.sizes is not None else [args.size]
    if not sizes:
        ap.error("--sizes is empty")

    started = now_rfc3339()
    results, partial, failed = [], False, False
    net = None
    try:
        img = open_image(args.input)
        net, adapter = make_net(args.param, args.bin, args.backend, args.threads, args.fp16)
        model = os.path.splitext(os.path.basename(args.param))[0]
        mode = "ncnn-fp16" if args.fp16 == "on" else "ncnn-fp32"
        for i, size in enumerate(sizes):
            chw = fit_image(img, size)
            _, h, w = chw.shape
            try:
                date = now_rfc3339()
                times, out = measure(net, chw, args)
                want = (3, h * args.scale, w * args.scale)
                if out.shape != want:
                    raise PeerError(f"output shape {out.shape}, expected {want} (wrong --scale?)")
            except PeerError as e:
                print(f"ncnn_peer: {w}x{h}: {e}", file=sys.stderr)
                partial = failed = True
                continue
            if i == 0 and (args.out or args.raw_out):
                hwc = np.ascontiguousarray(out.transpose(1, 2, 0))
                if args.out:
                    png = np.rint(np.clip(hwc, 0.0, 1.0) * 255.0).astype(np.uint8)
                    Image.fromarray(png, "RGB").save(args.out)
                if args.raw_out:
                    hwc.astype("<f4").tofile(args.raw_out)
            results.append({
                "tool": "ncnn",
                "tool_version": ncnn.__version__,
                "date": date,
                "adapter": dict(adapter),
                "model": model,
                "mode": mode,
                "width": w,
                "height": h,
                "scale": args.scale,
                "warmup": args.warmup,
                "runs": args.runs,
                "times_ms": [round(t, 3) for t in times],
                "median_ms": round(statistics.median(times), 3),
                "min_ms": round(min(times), 3),
                "max_ms": round(max(times), 3),
                "gops": None,
                "peak_share": None,
                "peak": None,
                "memory_bytes": None,
                "stages": None,
            })
            print(f"ncnn_peer: {adapter['name']} ({adapter['backend']}, {mode}, "
                  f"{args.threads} threads) {w}x{h}: median {statistics.median(times):.1f} ms "
                  f"(min {min(times):.1f}, max {max(times):.1f}, {args.runs} runs)",
                  file=sys.stderr)
    except PeerError as e:
        sys.exit(f"ncnn_peer: {e}")
    except KeyboardInterrupt:
        print("ncnn_peer: interrupted; writing the sizes measured so far", file=sys.stderr)
        partial = True
        failed = True
    finally:
        if net is not None:
            net.clear()
            del net
            if args.backend == "vulkan":
                ncnn.destroy_gpu_instance()

    doc = {
        "schema": SCHEMA,
        "tool": "ncnn",
        "tool_version": ncnn.__version__,
        "date": started,
        "partial": partial,
        "results": results,
    }
    text = json.dumps(doc, indent=2) + "\n"
    sys.stdout.write(text)
    if args.json:
        try:
            write_atomic(args.json, text)
        except OSError as e:
            sys.exit(f"ncnn_peer: cannot write {args.json}: {e.strerror or e}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
