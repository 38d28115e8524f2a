"""Render sample images with known text for the demo and the pipeline bench.

Usage: make_samples.py OUT_DIR [--count N]
Writes PNG/JPEG pages (a receipt, a letter, a sideways page, an upside-down photo-like
page, single lines) and OUT_DIR/truth.jsonl with {"image", "text"} per file. Uses only
Pillow and the DejaVu fonts from Debian's fonts-dejavu-core, so every image is ours.
"""

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
WORDS = (
    "invoice total amount paid cash change thank you please come again order table receipt date time "
    "coffee tea sandwich salad water juice bread butter cheese tomato soup noodle rice chicken fish "
    "delivery address street city phone email account number reference balance due tax service"
).split()


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / name), size)


def page(lines, size=(900, 1200), fnt=None, margin=60, spacing=14, bg=255):
    fnt = fnt or font("DejaVuSans.ttf", 30)
    img = Image.new("RGB", size, (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    y = margin
    for line in lines:
        draw.text((margin, y), line, fill=(20, 20, 20), font=fnt)
        y += fnt.size + spacing
    return img


def receipt(rng):
    items = [(rng.choice(WORDS).upper(), rng.randint(1, 4), rng.randint(100, 2500) / 100) for _ in range(6)]
    lines = ["CORNER CAFE", "12 MARKET STREET", f"DATE {rng.randint(1, 28):02d}/11/2026 TIME 12:{rng.randint(10, 59)}"]
    lines += [f"{name} x{qty} {price:.2f}" for name, qty, price in items]
    total = sum(q * p for _, q, p in items)
    lines += [f"TOTAL {total:.2f}", "THANK YOU"]
    return page(lines, size=(700, 900), fnt=font("DejaVuSansMono.ttf", 28)), lines


def letter(rng):
    lines = []
    for _ in range(8):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 7))).capitalize())
    return page(lines, fnt=font("DejaVuSerif.ttf", 30)), lines


def one_line(rng):
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
    fnt = font(rng.choice(["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf"]), 40)
    width = int(fnt.getlength(text)) + 40
    img = Image.new("RGB", (width, 70), (250, 248, 240))
    ImageDraw.Draw(img).text((20, 10), text, fill=(10, 10, 10), font=fnt)
    return img, [text]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--documents", type=int, default=0,
                    help="also write this many multi-page documents: a 3-page PDF (pages as 200 dpi images), "
                         "then a 2-page TIFF, alternately")
    ap.add_argument("--pdf-pages", type=int, default=3, help="pages of each PDF document")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    makers = [
        ("receipt", receipt, None, "png"),
        ("letter", letter, None, "jpg"),
        ("sideways", letter, 90, "png"),
        ("upside-down", receipt, 180, "jpg"),
        ("line", one_line, None, "png"),
        ("line", one_line, None, "webp"),
    ]
    with open(out / "truth.jsonl", "w") as truth:
        for i in range(args.count):
            kind, make, turn, ext = makers[i % len(makers)]
            img, lines = make(rng)
            if turn:
                img = img.rotate(turn, expand=True, fillcolor=(255, 255, 255))
            if ext == "jpg":
                img = img.filter(ImageFilter.GaussianBlur(0.6))
            name = f"{i:04d}-{kind}.{ext}"
            img.save(out / name, quality=90) if ext != "png" else img.save(out / name)
            truth.write(json.dumps({"image": name, "text": "\n".join(lines)}) + "\n")
        # Documents: the text of each page, pages separated by a form feed as in the result.
        for d in range(args.documents):
            pdf = d % 2 == 0
            pages = [(letter if k % 2 == 0 else receipt)(rng) for k in range(args.pdf_pages if pdf else 2)]
            images = [img.convert("RGB") for img, _ in pages]
            name = f"{args.count + d:04d}-document.{'pdf' if pdf else 'tif'}"
            if pdf:
                images[0].save(out / name, save_all=True, append_images=images[1:], resolution=200.0)
            else:
                images[0].save(out / name, save_all=True, append_images=images[1:], compression="tiff_deflate")
            text = "\f".join("\n".join(lines) for _, lines in pages)
            truth.write(json.dumps({"image": name, "text": text, "pages": len(pages)}) + "\n")


if __name__ == "__main__":
    main()
