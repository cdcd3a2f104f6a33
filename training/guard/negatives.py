"""Pictures that are not chest radiographs, for the radiograph classifier to learn and be measured on.

Twelve generators (documents, screenshots, charts, colour photos, textures, CT/MRI/ultrasound-like slices,
radiograph-like pictures of other body parts, gradients, noise, nearly-flat frames), each picture drawn from its
own seed, plus the photographs that ship inside scikit-image's wheel, cropped and re-exposed by
gen_from_picture. make_negatives() splits them by seed or by source picture, like patients.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.io import Decoded
from training.guard.radiographs import split_groups

WORDS = ("patient report result normal the of and to in is was with for on chest lung findings impression "
         "history technique comparison date name page total invoice amount order item quantity price email "
         "login password settings file edit view help upload download cancel submit next back home search "
         "menu dashboard analysis summary table figure data value status error ok yes no").split()


def _font(size: int):
    return ImageFont.load_default(size=max(6, int(size)))


def _size(rng, lo=160, hi=720, aspect=(0.6, 1.7)):
    h = int(rng.integers(lo, hi))
    return h, max(lo // 2, int(h * rng.uniform(*aspect)))


def _smooth(rng, shape, cells, channels=1):
    small = rng.normal(0, 1, (max(2, cells), max(2, cells), channels)).astype(np.float32)
    big = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return big.reshape(shape[0], shape[1], channels)


def _colour(rng, dark=False):
    base = rng.integers(0, 90, 3) if dark else rng.integers(120, 256, 3)
    return tuple(int(c) for c in base)


def _text_lines(d, rng, box, size, fill, lines=None):
    x0, y0, x1, y1 = box
    font = _font(size)
    y = y0
    for _ in range(lines or 10_000):
        if y + size > y1:
            break
        line, x = [], x0
        while True:
            word = str(rng.choice(WORDS))
            x += (len(word) + 1) * size * 0.55
            if x > x1:
                break
            line.append(word)
        if rng.random() < 0.15:
            line = line[: max(1, len(line) // 3)]
        d.text((x0, y), " ".join(line), fill=fill, font=font)
        y += int(size * rng.uniform(1.2, 1.8))


def gen_document(rng):
    h = int(rng.integers(400, 900))
    w = int(h * rng.uniform(0.65, 0.8)) if rng.random() < 0.7 else int(h * rng.uniform(1.2, 1.5))
    paper = int(rng.integers(225, 256))
    pil = Image.new("RGB", (w, h), (paper, paper, int(paper * rng.uniform(0.9, 1.0))))
    d = ImageDraw.Draw(pil)
    m = int(w * rng.uniform(0.06, 0.12))
    y = m
    if rng.random() < 0.5:  # title, maybe a coloured letterhead
        if rng.random() < 0.4:
            d.rectangle((0, 0, w, int(h * rng.uniform(0.05, 0.1))), fill=_colour(rng, dark=True))
            y = int(h * 0.12)
        d.text((m, y), " ".join(rng.choice(WORDS, 3)).upper(), fill=(0, 0, 0), font=_font(h * 0.035))
        y += int(h * 0.07)
    size = int(rng.integers(9, 20))
    ink = tuple([int(rng.integers(0, 70))] * 3)
    while y < h - m:
        part = rng.random()
        if part < 0.2:  # table
            rows, cols = int(rng.integers(3, 9)), int(rng.integers(2, 6))
            rh = int(size * 1.8)
            for r in range(rows + 1):
                d.line((m, y + r * rh, w - m, y + r * rh), fill=ink, width=1)
            for c in range(cols + 1):
                x = m + c * (w - 2 * m) // cols
                d.line((x, y, x, y + rows * rh), fill=ink, width=1)
            for r in range(rows):
                for c in range(cols):
                    d.text((m + c * (w - 2 * m) // cols + 3, y + r * rh + 3), str(rng.choice(WORDS)), fill=ink,
                           font=_font(size))
            y += rows * rh + size * 2
        elif part < 0.27:  # figure box
            bh = int(h * rng.uniform(0.1, 0.25))
            d.rectangle((m, y, w - m, y + bh), outline=ink, fill=_colour(rng))
            y += bh + size * 2
        else:
            n = int(rng.integers(2, 10))
            _text_lines(d, rng, (m, y, w - m, h - m), size, ink, lines=n)
            y += int(n * size * 1.5 + size * 1.5)
    a = np.asarray(pil)
    if rng.random() < 0.4:  # scanned or photographed page
        a = _as_photographed(a, rng)
    return a


def _as_photographed(a, rng):
    h, w = a.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-5, 5), rng.uniform(0.85, 1.0))
    bg = tuple(int(v) for v in rng.integers(40, 200, 3))
    a = cv2.warpAffine(a, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=bg).astype(np.float32)
    shade = 1 + 0.25 * _smooth(rng, (h, w), 3)
    a = a * shade + rng.normal(0, rng.uniform(1, 8), a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


def gen_screenshot(rng):
    h, w = _size(rng, 300, 800, (1.2, 1.9))
    dark = rng.random() < 0.4
    bg = _colour(rng, dark)
    pil = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(pil)
    fg = (230, 230, 230) if dark else (20, 20, 30)
    bar = int(h * rng.uniform(0.04, 0.09))
    d.rectangle((0, 0, w, bar), fill=_colour(rng, not dark))
    d.text((10, bar // 4), " ".join(rng.choice(WORDS, 4)), fill=fg, font=_font(bar * 0.5))
    side = int(w * rng.uniform(0.0, 0.25))
    if side:
        d.rectangle((0, bar, side, h), fill=_colour(rng, dark))
        _text_lines(d, rng, (8, bar + 10, side - 4, h), int(rng.integers(10, 16)), fg)
    x0 = side + 16
    y = bar + 16
    while y < h - 30:
        kind = rng.random()
        if kind < 0.3:  # buttons
            bx = x0
            for _ in range(int(rng.integers(1, 5))):
                bw = int(rng.integers(60, 160))
                d.rounded_rectangle((bx, y, bx + bw, y + 30), radius=6, fill=_colour(rng, rng.random() < 0.5))
                d.text((bx + 8, y + 8), str(rng.choice(WORDS)), fill=fg, font=_font(13))
                bx += bw + 12
            y += 46
        elif kind < 0.5:  # panel / card / input
            ph = int(rng.integers(40, 200))
            d.rectangle((x0, y, w - 16, y + ph), fill=_colour(rng, dark), outline=fg)
            _text_lines(d, rng, (x0 + 8, y + 8, w - 24, y + ph - 4), int(rng.integers(10, 16)), fg)
            y += ph + 16
        elif kind < 0.6:  # a picture inside the page (a photo-like field)
            ph = int(rng.integers(60, 220))
            pw = int(min(w - 16 - x0, ph * rng.uniform(1, 2)))
            patch = np.clip(128 + 60 * _smooth(rng, (ph, max(pw, 2)), 4, 3), 0, 255).astype(np.uint8)
            pil.paste(Image.fromarray(patch), (x0, y))
            y += ph + 16
        else:
            n = int(rng.integers(1, 6))
            size = int(rng.integers(10, 18))
            _text_lines(d, rng, (x0, y, w - 16, h - 10), size, fg, lines=n)
            y += int(n * size * 1.6) + 10
    return np.asarray(pil)


def gen_chart(rng):
    h, w = _size(rng, 240, 640, (1.1, 1.8))
    pil = Image.new("RGB", (w, h), (255, 255, 255) if rng.random() < 0.8 else _colour(rng))
    d = ImageDraw.Draw(pil)
    l, b, r, t = int(w * 0.12), int(h * 0.85), int(w * 0.95), int(h * 0.1)
    for i in range(int(rng.integers(0, 8))):  # grid
        y = t + i * (b - t) // 7
        d.line((l, y, r, y), fill=(220, 220, 220))
    d.line((l, t, l, b), fill=(0, 0, 0), width=2)
    d.line((l, b, r, b), fill=(0, 0, 0), width=2)
    if rng.random() < 0.5:
        n = int(rng.integers(3, 15))
        bw = (r - l) // (n * 1.5)
        for i in range(n):
            x = l + int((i + 0.3) * (r - l) / n)
            d.rectangle((x, int(b - rng.uniform(0.05, 0.95) * (b - t)), x + bw, b), fill=_colour(rng, True))
    else:
        for _ in range(int(rng.integers(1, 5))):
            xs = np.linspace(l, r, 50)
            ys = b - (b - t) * np.clip(0.5 + np.cumsum(rng.normal(0, 0.06, 50)), 0.02, 0.98)
            d.line(list(zip(xs, ys)), fill=_colour(rng, True), width=int(rng.integers(1, 4)))
    d.text((l, int(h * 0.9)), " ".join(rng.choice(WORDS, 3)), fill=(0, 0, 0), font=_font(h * 0.04))
    d.text((l, 4), " ".join(rng.choice(WORDS, 4)).title(), fill=(0, 0, 0), font=_font(h * 0.05))
    return np.asarray(pil)


def gen_colour_photo(rng):
    h, w = _size(rng)
    a = 128 + 70 * _smooth(rng, (h, w), int(rng.integers(2, 8)), 3)
    for _ in range(int(rng.integers(2, 12))):  # objects
        c = rng.integers(0, 256, 3).astype(np.float32)
        mask = np.zeros((h, w), np.float32)
        cv2.ellipse(mask, (int(rng.uniform(0, w)), int(rng.uniform(0, h))),
                    (int(rng.uniform(10, w / 3)), int(rng.uniform(10, h / 3))), rng.uniform(0, 180), 0, 360, 1, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(1, 8))[..., None]
        a = a * (1 - mask) + mask * (c + 30 * _smooth(rng, (h, w), 6, 3))
    a += rng.normal(0, rng.uniform(1, 10), a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


_SKIMAGE_NAMES = ("astronaut", "brick", "camera", "cell", "chelsea", "chessboard_GRAY", "clock_motion", "coffee",
                  "coins", "color", "grass", "gravel", "horse", "hubble_deep_field", "ihc", "logo", "microaneurysms",
                  "moon", "motorcycle_left", "page", "phantom", "retina", "rocket", "text")


def skimage_pictures() -> dict[str, np.ndarray]:
    """The photographs and scans that ship inside scikit-image's wheel (nothing is downloaded); {} without it."""
    try:
        import skimage.data
    except ImportError:
        return {}
    folder = Path(skimage.data.__file__).parent
    out = {}
    for name in _SKIMAGE_NAMES:
        for ext in (".png", ".jpg"):
            f = folder / (name + ext)
            if f.exists():
                out[name] = np.asarray(Image.open(f).convert("RGB"))
    faces = folder / "lfw_subset.npy"
    if faces.exists():
        arr = np.load(faces, allow_pickle=False)
        for i, face in enumerate(arr):
            out[f"lfw{i:03d}"] = np.clip(face * 255, 0, 255).astype(np.uint8) if face.max() <= 1 else face
    return out


def gen_from_picture(rng, picture: np.ndarray):
    a = picture
    h, w = a.shape[:2]
    if min(h, w) > 64 and rng.random() < 0.7:
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        a = a[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        a = a[:, ::-1]
    scale = rng.uniform(150, 600) / max(a.shape[:2])
    a = cv2.resize(np.ascontiguousarray(a), (max(64, int(a.shape[1] * scale)), max(64, int(a.shape[0] * scale))),
                   interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    a = np.clip(255 * (a / 255.0) ** rng.uniform(0.7, 1.4), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY) if a.ndim == 3 else a
    return a


def gen_texture(rng):
    h, w = _size(rng)
    kind = rng.integers(0, 5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # 1/f noise
        spec = np.fft.fft2(rng.normal(size=(h, w)))
        f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2) + 1e-3
        a = np.real(np.fft.ifft2(spec / f ** rng.uniform(0.8, 1.8)))
    elif kind == 1:  # gratings
        a = sum(np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / rng.uniform(4, 60))
                for t in rng.uniform(0, np.pi, int(rng.integers(1, 4))))
    elif kind == 2:  # checkerboard / tiles
        s = int(rng.integers(6, 60))
        a = ((xx // s + yy // s) % 2).astype(np.float32) + 0.2 * rng.normal(size=(h, w))
    elif kind == 3:  # bricks
        s = int(rng.integers(10, 40))
        a = np.ones((h, w), np.float32)
        a[(yy % s) < 2] = 0
        a[((xx + (yy // s % 2) * s) % (2 * s)) < 2] = 0
        a += 0.3 * _smooth(rng, (h, w), 30)[..., 0]
    else:  # dots / cells
        a = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(20, 300))):
            cv2.circle(a, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.uniform(2, 20)),
                       float(rng.uniform(0.3, 1)), -1)
        a = cv2.GaussianBlur(a, (0, 0), 1.5)
    a = (a - a.min()) / max(float(np.ptp(a)), 1e-6)
    if rng.random() < 0.5:
        tint = rng.uniform(0.3, 1.0, 3)
        return np.clip(255 * a[..., None] * tint + rng.uniform(0, 60, 3), 0, 255).astype(np.uint8)
    return np.clip(255 * a, 0, 255).astype(np.uint8)


def _noise_field(rng, shape, strength):
    return strength * _smooth(rng, shape, int(rng.integers(8, 40)))[..., 0] + rng.normal(0, strength / 2, shape)


def gen_ct_slice(rng):
    """Axial CT-like slice: air black, a body ellipse, lungs or abdominal organs, spine, table."""
    n = int(rng.choice([256, 384, 512]))
    a = np.full((n, n), rng.uniform(0, 15), np.float32)
    cx, cy = n / 2 + rng.uniform(-10, 10), n / 2 + rng.uniform(-5, 15)
    bw, bh = n * rng.uniform(0.35, 0.46), n * rng.uniform(0.25, 0.36)
    region = rng.choice(["chest", "abdomen", "head"])
    if region == "head":
        bw = bh = n * rng.uniform(0.3, 0.42)
        cv2.ellipse(a, (int(cx), int(cy)), (int(bw), int(bh * 1.15)), 0, 0, 360, 240, -1)  # skull
        cv2.ellipse(a, (int(cx), int(cy)), (int(bw * 0.9), int(bh * 1.05)), 0, 0, 360, 110, -1)
        a += np.where(a == 110, _noise_field(rng, a.shape, 8), 0)
        cv2.ellipse(a, (int(cx), int(cy)), (int(bw * 0.12), int(bh * 0.25)), 0, 0, 360, 60, -1)  # ventricles
    else:
        cv2.ellipse(a, (int(cx), int(cy)), (int(bw), int(bh)), 0, 0, 360, 90, -1)  # fat
        cv2.ellipse(a, (int(cx), int(cy)), (int(bw * 0.92), int(bh * 0.9)), 0, 0, 360, 130, -1)  # muscle/soft
        if region == "chest":
            for side in (-1, 1):
                cv2.ellipse(a, (int(cx + side * bw * 0.45), int(cy)), (int(bw * 0.35), int(bh * 0.7)),
                            side * rng.uniform(0, 15), 0, 360, rng.uniform(5, 25), -1)
            cv2.ellipse(a, (int(cx + bw * 0.08), int(cy - bh * 0.05)), (int(bw * 0.22), int(bh * 0.35)), 0, 0, 360,
                        140, -1)  # heart
            for t in np.linspace(0, 2 * np.pi, int(rng.integers(10, 18)), endpoint=False):  # ribs
                cv2.circle(a, (int(cx + bw * 0.88 * np.cos(t)), int(cy + bh * 0.86 * np.sin(t))),
                           int(n * 0.012), 230, -1)
        else:
            cv2.ellipse(a, (int(cx - bw * 0.35), int(cy - bh * 0.1)), (int(bw * 0.4), int(bh * 0.5)), 0, 0, 360,
                        150, -1)  # liver
            for side in (-1, 1):
                cv2.ellipse(a, (int(cx + side * bw * 0.35), int(cy + bh * 0.35)), (int(bw * 0.1), int(bh * 0.2)),
                            0, 0, 360, 160, -1)  # kidneys
            for _ in range(int(rng.integers(3, 12))):  # bowel gas
                cv2.circle(a, (int(cx + rng.uniform(-0.5, 0.5) * bw), int(cy + rng.uniform(-0.5, 0.4) * bh)),
                           int(rng.uniform(3, 15)), 10, -1)
        cv2.ellipse(a, (int(cx), int(cy + bh * 0.65)), (int(n * 0.05), int(n * 0.045)), 0, 0, 360, 240, -1)  # spine
        cv2.rectangle(a, (int(cx - bw * 1.1), int(cy + bh * 1.05)), (int(cx + bw * 1.1), int(cy + bh * 1.12)),
                      170, -1)  # table
        a += np.where(a > 60, _noise_field(rng, a.shape, 6), 0)
    a = cv2.GaussianBlur(a, (0, 0), rng.uniform(0.6, 1.5)) + rng.normal(0, rng.uniform(2, 8), a.shape)
    if rng.random() < 0.3:
        pil = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        ImageDraw.Draw(pil).text((5, 5), "W:400 L:40  SE:3 IM:%d" % rng.integers(1, 300), fill=255, font=_font(n / 30))
        a = np.asarray(pil).astype(np.float32)
    return np.clip(a, 0, 255).astype(np.uint8)


def gen_mri(rng):
    n = int(rng.choice([256, 320, 512]))
    a = np.zeros((n, n), np.float32)
    c = (int(n / 2 + rng.uniform(-8, 8)), int(n / 2 + rng.uniform(-8, 8)))
    ax = (int(n * rng.uniform(0.28, 0.4)), int(n * rng.uniform(0.33, 0.45)))
    cv2.ellipse(a, c, ax, 0, 0, 360, 200, -1)  # scalp / fat (bright on T1)
    cv2.ellipse(a, c, (int(ax[0] * 0.93), int(ax[1] * 0.93)), 0, 0, 360, 30, -1)  # skull (dark)
    cv2.ellipse(a, c, (int(ax[0] * 0.88), int(ax[1] * 0.88)), 0, 0, 360, 120, -1)  # brain
    folds = _smooth(rng, (n, n), 24)[..., 0]
    a = np.where(a == 120, 120 + 35 * np.sign(folds) * np.abs(folds) ** 0.5, a)
    if rng.random() < 0.5:
        cv2.ellipse(a, c, (int(ax[0] * 0.15), int(ax[1] * 0.3)), 0, 0, 360, 40, -1)
    a = cv2.GaussianBlur(a, (0, 0), 1.2) + np.abs(rng.normal(0, rng.uniform(2, 10), a.shape))
    return np.clip(a, 0, 255).astype(np.uint8)


def gen_ultrasound(rng):
    h, w = _size(rng, 300, 640, (1.1, 1.5))
    a = np.zeros((h, w), np.float32)
    apex = (w // 2, int(h * 0.05))
    r = int(h * rng.uniform(0.75, 0.92))
    half = rng.uniform(30, 45)
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, apex, (r, r), 90, -half, half, 1, -1)
    speckle = rng.rayleigh(1, (h, w)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), 1.0)
    struct = 0.6 + 0.5 * _smooth(rng, (h, w), 6)[..., 0]
    for _ in range(int(rng.integers(0, 4))):  # dark cysts / vessels
        cv2.ellipse(struct, (int(rng.uniform(0.3, 0.7) * w), int(rng.uniform(0.3, 0.8) * h)),
                    (int(rng.uniform(10, 50)), int(rng.uniform(8, 40))), 0, 0, 360, 0.05, -1)
    a = mask * speckle * struct * 90
    pil = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    d.text((6, 6), "%s  %d Hz  %d dB" % (rng.choice(WORDS), rng.integers(10, 60), rng.integers(40, 90)),
           fill=220, font=_font(h / 30))
    return np.asarray(pil)


def gen_other_radiograph(rng):
    """Radiograph-like pictures of other body parts: hand, long bones, skull, pelvis. Air black, bone white."""
    h, w = _size(rng, 256, 640, (0.6, 1.3))
    a = np.full((h, w), rng.uniform(0, 30), np.float32)
    kind = rng.choice(["hand", "limb", "skull", "pelvis"])
    if kind == "hand":
        cx = w / 2 + rng.uniform(-0.1, 0.1) * w
        cv2.ellipse(a, (int(cx), int(h * 0.65)), (int(w * 0.22), int(h * 0.2)), 0, 0, 360, 90, -1)  # palm
        cv2.rectangle(a, (int(cx - w * 0.15), int(h * 0.75)), (int(cx + w * 0.15), h), 90, -1)  # wrist
        for i, ang in enumerate(np.linspace(-35, 35, 5)):
            t = np.deg2rad(ang + rng.uniform(-5, 5))
            length = h * rng.uniform(0.25, 0.4) * (0.7 if i in (0, 4) else 1)
            x0, y0 = cx + (i - 2) * w * 0.08, h * 0.55
            x1, y1 = x0 + length * np.sin(t), y0 - length * np.cos(t)
            cv2.line(a, (int(x0), int(y0)), (int(x1), int(y1)), 90, int(w * 0.06))  # soft tissue
            cv2.line(a, (int(x0), int(y0 + h * 0.15)), (int(x1), int(y1)), 200, int(w * 0.025))  # bone
    elif kind == "limb":
        ang = rng.uniform(-15, 15)
        cv2.ellipse(a, (w // 2, h // 2), (int(w * 0.25), int(h * 0.6)), ang, 0, 360, 90, -1)
        for off in ([0] if rng.random() < 0.5 else [-0.06, 0.06]):
            x = int(w / 2 + off * w)
            cv2.line(a, (x, 0), (x + int(np.tan(np.deg2rad(ang)) * h), h), 210, int(w * rng.uniform(0.05, 0.09)))
            cv2.line(a, (x, 0), (x + int(np.tan(np.deg2rad(ang)) * h), h), 150, int(w * rng.uniform(0.02, 0.04)))
        if rng.random() < 0.6:  # joint
            cv2.circle(a, (w // 2, int(h * rng.uniform(0.3, 0.7))), int(w * 0.09), 220, -1)
    elif kind == "skull":
        c = (w // 2, h // 2)
        cv2.ellipse(a, c, (int(w * 0.4), int(h * 0.42)), 0, 0, 360, 220, -1)
        cv2.ellipse(a, c, (int(w * 0.36), int(h * 0.38)), 0, 0, 360, 120, -1)
        cv2.ellipse(a, (c[0], int(h * 0.78)), (int(w * 0.2), int(h * 0.12)), 0, 0, 180, 220, int(w * 0.03))  # jaw
        cv2.circle(a, (int(w * 0.38), int(h * 0.5)), int(w * 0.07), 60, -1)  # orbits
        cv2.circle(a, (int(w * 0.62), int(h * 0.5)), int(w * 0.07), 60, -1)
    else:  # pelvis / abdomen
        cv2.rectangle(a, (int(w * 0.08), 0), (int(w * 0.92), h), 110, -1)
        cv2.rectangle(a, (int(w * 0.46), 0), (int(w * 0.54), int(h * 0.6)), 210, -1)  # lumbar spine
        cv2.ellipse(a, (w // 2, int(h * 0.7)), (int(w * 0.35), int(h * 0.25)), 0, 180, 360, 220, int(w * 0.05))
        for side in (-1, 1):
            cv2.circle(a, (int(w / 2 + side * w * 0.3), int(h * 0.8)), int(w * 0.07), 230, -1)  # femoral heads
        for _ in range(int(rng.integers(3, 15))):  # bowel gas
            cv2.ellipse(a, (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.1, 0.6) * h)),
                        (int(rng.uniform(5, 30)), int(rng.uniform(5, 20))), rng.uniform(0, 180), 0, 360, 40, -1)
    a += _noise_field(rng, a.shape, 10)
    a = cv2.GaussianBlur(a, (0, 0), rng.uniform(1, 4)) + rng.normal(0, 4, a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


def gen_gradient(rng):
    h, w = _size(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:
        t = rng.uniform(0, np.pi)
        g = xx * np.cos(t) + yy * np.sin(t)
    else:
        g = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h))
    g = (g - g.min()) / max(float(np.ptp(g)), 1e-6)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if rng.random() < 0.5:
        c1 = c0 + (c1 - c0).mean()  # gray
        c0 = np.full(3, c0.mean())
        c1 = np.full(3, c1[0])
    a = c0 + g[..., None] * (c1 - c0) + rng.normal(0, rng.uniform(0, 6), (h, w, 1))
    return np.clip(a, 0, 255).astype(np.uint8)


def gen_noise(rng):
    h, w = _size(rng)
    kind = rng.integers(0, 3)
    if kind == 0:
        a = rng.uniform(0, 255, (h, w))
    elif kind == 1:
        a = rng.normal(rng.uniform(60, 200), rng.uniform(10, 80), (h, w))
    else:
        a = np.where(rng.random((h, w)) < rng.uniform(0.05, 0.5), 255, rng.uniform(0, 100))
    if rng.random() < 0.3:
        a = np.stack([a, rng.permutation(a.ravel()).reshape(h, w), a[::-1]], -1)
    return np.clip(a, 0, 255).astype(np.uint8)


def gen_nearly_flat(rng):
    """Nearly blank or saturated frames, with a little noise or a few marks: what a failed export looks like."""
    h, w = _size(rng)
    level = float(rng.choice([rng.uniform(0, 20), rng.uniform(235, 255), rng.uniform(20, 235)]))
    a = np.full((h, w), level, np.float32) + rng.normal(0, rng.uniform(0.5, 6), (h, w))
    for _ in range(int(rng.integers(0, 4))):
        cv2.rectangle(a, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), (int(rng.uniform(0, w)),
                      int(rng.uniform(0, h))), float(rng.uniform(0, 255)), int(rng.integers(1, 4)))
    return np.clip(a, 0, 255).astype(np.uint8)


GENERATORS = {
    "document": gen_document, "screenshot": gen_screenshot, "chart": gen_chart, "colour_photo": gen_colour_photo,
    "texture": gen_texture, "ct_slice": gen_ct_slice, "mri": gen_mri, "ultrasound": gen_ultrasound,
    "other_radiograph": gen_other_radiograph, "gradient": gen_gradient, "noise": gen_noise,
    "nearly_flat": gen_nearly_flat,
}


def as_decoded(img: np.ndarray) -> Decoded:
    """What model.io.decode gives for this picture: ITU-R 601 gray, and the colour warning when channels differ."""
    if img.ndim == 2:
        return Decoded(pixels=np.ascontiguousarray(img), meta={}, warnings=[])
    r, g, b = (np.ascontiguousarray(img[..., i]) for i in range(3))
    colour = int(cv2.absdiff(r, g).max()) > 3 or int(cv2.absdiff(g, b).max()) > 3
    gray = np.clip(0.299 * r + 0.587 * g + 0.114 * b + 0.5, 0, 255).astype(np.uint8)
    warnings = [{"code": "color_image", "message": "colour"}] if colour else []
    return Decoded(pixels=gray, meta={}, warnings=warnings)


def make_negatives(n_per_family: int, seed: int) -> list[dict]:
    """Generated and shipped pictures, each with its family, group and split (by seed, or by source picture)."""
    out = []
    for f_index, (family, gen) in enumerate(GENERATORS.items()):
        groups = np.arange(n_per_family)
        splits = split_groups([f"{family}:{g}" for g in groups], seed)
        for g, split in zip(groups, splits):
            rng = np.random.default_rng([seed, f_index, int(g)])
            out.append({"family": family, "group": f"{family}:{g}", "split": split, "decoded": as_decoded(gen(rng))})
    pictures = skimage_pictures()
    if pictures:
        names = sorted(pictures)
        splits = dict(zip(names, split_groups(names, seed + 1)))
        for i, name in enumerate(names):
            # lfw_subset: 200 tiny 25×25 crops (faces and not), upscaled; the others: photos, scans, micrographs
            family = "lfw_small_photo" if name.startswith("lfw") else "skimage_picture"
            for j in range(2 if family == "lfw_small_photo" else max(1, n_per_family // 12)):
                rng = np.random.default_rng([seed, 1000 + i, j])
                out.append({"family": family, "group": f"{family}:{name}", "split": splits[name],
                            "decoded": as_decoded(gen_from_picture(rng, pictures[name]))})
    return out
