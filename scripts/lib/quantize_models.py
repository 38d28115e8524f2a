"""Derive an INT8 model set from a float model set. scripts/quantize-models.sh runs this with
the shipped recipe (its options are the recipe; the defaults here are only a starting point).

Usage: quantize_models.py --src models/ppocrv6-small --out models/ppocrv6-small-int8
           [--rec static|dynamic|copy] [--det static|dynamic|copy]
           [--rec-ops Conv,MatMul|all] [--det-ops all|...] [--rec-exclude NODE,...] [--det-exclude ...]
           [--rec-exclude-depthwise] [--weight-type qint8|quint8] [--[no-]per-channel]
           [--calib-method minmax|percentile|entropy] [--calib-lines N] [--calib-pages N] [--calib-dir D]

static: ONNX Runtime's static QDQ quantization (`quantize_static`; unsigned 8-bit activations,
signed per-channel 8-bit weights; ONNX Runtime runs the pairs as QLinearConv / QLinearMatMul).
Recogniser: Conv and MatMul only by default (its layer norms, GELU, adds and the final soft-max
stay float: quantizing them too was slower, and a u8 soft-max over 18,710 classes would coarsen
the confidences). Detector: every op ONNX Runtime can quantize (fewer float <-> int8 conversions
between its many Mul/Add/Concat nodes: faster than Conv only). The activation ranges come from
calibration on inputs this script renders itself with seeded generators (Pillow + Debian's
DejaVu fonts: text lines at the recogniser's 48 px height, pages of text on plain, gradient and
noisy backgrounds for the detector), never from the evaluation sets. The ranges are rounded to
4 significant digits before quantizing, so a different CPU's last-bit float differences during
calibration cannot change the output bytes. Models are first converted to opset 13 (per-channel
QDQ needs it). --calib-method applies to the recogniser only (percentile/entropy pad every line
to 640 px: the histogram calibrators need one shape); the detector's pages, of several sizes,
always use min/max.

dynamic: `quantize_dynamic` (weights only, activations quantized at run time): measured slower
than float on this recogniser (docs/engine.md "INT8 model set").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
         "DejaVuSansCondensed.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf"]
WORDS = ("invoice total amount paid cash change thank you please come again order table receipt date "
         "time coffee tea sandwich salad water juice bread butter cheese tomato soup noodle rice chicken "
         "delivery address street city phone email account number reference balance due tax service "
         "STOP EXIT Sale OPEN Hotel Bank 24h Street Road Avenue www.example.com No. Tel: Fax: Qty "
         "GST TOTAL SUBTOTAL ROUNDING CHANGE VISA Cashier Member Points").split()


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 6)):
        k = rng.random()
        if k < 0.6:
            parts.append(rng.choice(WORDS))
        elif k < 0.85:
            parts.append(f"{rng.randint(0, 9999)}.{rng.randint(0, 99):02d}")
        else:
            parts.append(f"{rng.randint(1, 31):02d}/{rng.randint(1, 12):02d}/20{rng.randint(10, 30)}")
    return " ".join(parts)


def colours(rng: random.Random, nprng: np.random.Generator):
    """(background RGB, ink RGB) with enough contrast, sometimes light on dark."""
    light = tuple(rng.randint(170, 255) for _ in range(3))
    dark = tuple(rng.randint(0, 90) for _ in range(3))
    return (dark, light) if nprng.random() < 0.25 else (light, dark)


def noisy(img, nprng: np.random.Generator, sigma: float) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    a = a + nprng.normal(0.0, sigma, a.shape).astype(np.float32)
    return np.clip(a, 0, 255)


def line_inputs(n: int, seed: int = 11, fixed: int = 0) -> list[np.ndarray]:
    """Text lines at height 48, normalised like the engine ((x / 255 - 0.5) / 0.5, BGR), in
    batches of 4 padded to the widest (multiple of 8)."""
    from PIL import Image, ImageDraw, ImageFont
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        s = text(rng)
        fnt = ImageFont.truetype(str(FONT_DIR / rng.choice(FONTS)), rng.randint(26, 40))
        w = int(fnt.getlength(s)) + rng.randint(6, 30)
        bg, ink = colours(rng, nprng)
        img = Image.new("RGB", (w, 48), bg)
        ImageDraw.Draw(img).text((rng.randint(2, 12), rng.randint(0, 8)), s, fill=ink, font=fnt)
        a = noisy(img, nprng, rng.choice([0.0, 4.0, 10.0]))
        crops.append(a[:, :, ::-1] * (2.0 / 255.0) - 1.0)
    return to_batches(crops, fixed)


def page_inputs(n: int, seed: int = 13) -> list[np.ndarray]:
    """Pages of text lines (receipts, letters, signs) on plain, gradient or noisy backgrounds at
    detector sizes (max side 960, multiples of 32), ImageNet-normalised BGR like the engine."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    out = []
    for i in range(n):
        w, h = rng.choice([(640, 960), (736, 960), (960, 544), (960, 736), (704, 704)])
        bg, ink = colours(rng, nprng)
        base = np.empty((h, w, 3), dtype=np.float32)
        base[:] = bg
        if i % 3 == 1:  # a gradient, like uneven light on a photo
            base *= np.linspace(0.55, 1.0, w, dtype=np.float32)[None, :, None]
        img = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        y = rng.randint(10, 60)
        while y < h - 40:
            fnt = ImageFont.truetype(str(FONT_DIR / rng.choice(FONTS)), rng.randint(14, 48))
            x = rng.randint(5, max(6, w // 3))
            draw.text((x, y), text(rng), fill=ink, font=fnt)
            y += fnt.size + rng.randint(4, 40)
        for _ in range(rng.randint(0, 4)):  # blocks of other colour, like signs or logos
            x0, y0 = rng.randint(0, w - 50), rng.randint(0, h - 50)
            draw.rectangle((x0, y0, x0 + rng.randint(20, 200), y0 + rng.randint(20, 120)),
                           fill=tuple(rng.randint(0, 255) for _ in range(3)))
        if i % 4 == 3:
            img = img.filter(ImageFilter.GaussianBlur(1.0))
        a = noisy(img, nprng, rng.choice([0.0, 6.0, 14.0])) / 255.0
        a = (a - mean) / std
        out.append(a[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32).copy())
    return out


def to_batches(crops: list[np.ndarray], fixed: int = 0) -> list[np.ndarray]:
    """Batches of 4 padded to the widest (multiple of 8), or all to `fixed` px (histogram
    calibrators need one shape)."""
    batches = []
    if fixed:
        crops = [c[:, :fixed] for c in crops]
    for i in range(0, len(crops), 4):
        group = crops[i:i + 4]
        width = fixed or max(64, (max(c.shape[1] for c in group) + 7) // 8 * 8)
        x = np.zeros((len(group), 3, 48, width), dtype=np.float32)
        for j, c in enumerate(group):
            x[j, :, :, :c.shape[1]] = c.transpose(2, 0, 1)
        batches.append(x)
    return batches


def dir_line_inputs(d: str, n: int) -> list[np.ndarray]:
    """Line images from a folder (sorted names, the first n), resized to height 48."""
    from PIL import Image
    crops = []
    for p in sorted(Path(d).glob("*.png"))[:n]:
        img = Image.open(p).convert("RGB")
        w = max(16, min(1600, round(img.width * 48 / img.height)))
        a = np.asarray(img.resize((w, 48), Image.BILINEAR), dtype=np.float32)
        crops.append(a[:, :, ::-1] * (2.0 / 255.0) - 1.0)
    return to_batches(crops)


class Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]):
        self.name, self.batches, self.i = name, batches, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def __len__(self):
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int):
        self.i = start_index


def round_ranges(path: Path) -> None:
    """Rounds every calibrated float in ORT's calibration cache to 4 significant digits."""
    def rnd(v):
        if isinstance(v, float):
            return float(f"{v:.4g}")
        if isinstance(v, list):
            return [rnd(x) for x in v]
        if isinstance(v, dict):
            return {k: rnd(x) for k, x in v.items()}
        return v
    data = json.loads(path.read_text())
    path.write_text(json.dumps(rnd(data), sort_keys=True))


def name_nodes(model: onnx.ModelProto) -> None:
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"


def depthwise(model: onnx.ModelProto) -> list[str]:
    return sorted(n.name for n in model.graph.node if n.op_type == "Conv"
                  and next((a.i for a in n.attribute if a.name == "group"), 1) > 1)


def quantize_one(kind: str, src: Path, dst: Path, mode: str, args) -> None:
    spec = args.rec_ops if kind == "rec" else args.det_ops
    ops = None if spec == "all" else [o for o in spec.split(",") if o]
    model = onnx.load(str(src))
    name_nodes(model)
    excl = depthwise(model) if args.rec_exclude_depthwise and kind == "rec" else []
    excl += [x for x in (args.rec_exclude if kind == "rec" else args.det_exclude).split(",") if x]
    wtype = QuantType.QInt8 if args.weight_type == "qint8" else QuantType.QUInt8
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        if mode == "dynamic":
            onnx.save(model, str(prepared))
            quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=ops or ["Conv", "MatMul"],
                             per_channel=args.per_channel, reduce_range=args.reduce_range, weight_type=wtype,
                             nodes_to_exclude=excl, extra_options={"MatMulConstBOnly": True})
        else:
            if model.opset_import[0].version < 13:
                model = version_converter.convert_version(model, 13)
            onnx.save(model, str(prepared))
            inp = model.graph.input[0].name
            if kind == "rec" and args.calib_dir:
                batches = dir_line_inputs(args.calib_dir, args.calib_lines)
            else:
                fixed = 640 if args.calib_method != "minmax" else 0
                batches = (line_inputs(args.calib_lines, seed=args.calib_seed, fixed=fixed) if kind == "rec"
                           else page_inputs(args.calib_pages))
            cache = Path(tmp) / "ranges.json"
            method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                      "entropy": CalibrationMethod.Entropy}[args.calib_method if kind == "rec" else "minmax"]
            common = dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, per_channel=args.per_channel,
                          reduce_range=args.reduce_range, activation_type=QuantType.QUInt8, weight_type=wtype, nodes_to_exclude=excl,
                          calibrate_method=method, calibration_cache_path=str(cache),
                          extra_options={"MatMulConstBOnly": args.matmul_const_b_only})
            # Calibrate (writes the cache), round the ranges, quantize again from the rounded cache.
            quantize_static(str(prepared), str(Path(tmp) / "first.onnx"), Reader(inp, batches), **common)
            round_ranges(cache)
            quantize_static(str(prepared), str(dst), None, **common)
    print(f"quantize: {kind} {mode} {src.stat().st_size / 1e6:.1f} -> {dst.stat().st_size / 1e6:.1f} MB "
          f"({len(excl)} nodes kept float) sha256 {sha256(dst)}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rec", choices=["static", "dynamic", "copy"], default="static")
    ap.add_argument("--det", choices=["static", "dynamic", "copy"], default="static")
    ap.add_argument("--weight-type", choices=["qint8", "quint8"], default="qint8")
    ap.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=False,
                    help="7-bit weights: no 16-bit saturation in x86 kernels without VNNI (AVX2, AVX-512F)")
    ap.add_argument("--rec-ops", default="Conv,MatMul",
                    help="recogniser op types to quantize (comma-separated, or all)")
    ap.add_argument("--det-ops", default="all", help="detector op types to quantize (comma-separated, or all)")
    ap.add_argument("--matmul-const-b-only", action=argparse.BooleanOptionalAction, default=True,
                    help="static: quantize only MatMuls with a constant weight (not attention's)")
    ap.add_argument("--rec-exclude", default="", help="recogniser nodes kept float (comma-separated names)")
    ap.add_argument("--det-exclude", default="", help="detector nodes kept float (comma-separated names)")
    ap.add_argument("--rec-exclude-depthwise", action="store_true",
                    help="keep the recogniser's grouped (depthwise) convolutions float")
    ap.add_argument("--calib-method", choices=["minmax", "percentile", "entropy"], default="minmax")
    ap.add_argument("--calib-dir", default="", help="recogniser calibration from line images in this folder")
    ap.add_argument("--calib-seed", type=int, default=11, help="seed of the rendered recogniser lines")
    ap.add_argument("--calib-lines", type=int, default=64, help="rendered text lines for the recogniser")
    ap.add_argument("--calib-pages", type=int, default=12, help="rendered pages for the detector")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing": not needed here
    args.out.mkdir(parents=True, exist_ok=True)
    for kind in ("det", "rec"):
        src, dst = args.src / f"{kind}.onnx", args.out / f"{kind}.onnx"
        mode = getattr(args, kind)
        if mode == "copy":
            shutil.copyfile(src, dst)
        else:
            quantize_one(kind, src, dst, mode, args)
    shutil.copyfile(args.src / "dict.txt", args.out / "dict.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
