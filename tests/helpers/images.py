"""Synthetic pictures for the tests, and PNG bytes of them. Two chest images, and only two:

- `radiograph`: drawn from anatomy; the input guard ACCEPTS it as a frontal chest X-ray, so it gets a label.
- `toy_chest`: lungs, spine and a blob; what the tiny bundles (helpers.bundles) are trained on. The guard does NOT
  accept it: analysed, it is "not assessed" (`not_chest_xray`, no label).

Neither is a real radiograph: that the guard passes `radiograph` shows the check is not flagging everything, nothing
more. The rest are pictures that are not chest radiographs (colour photo, document, CT slice, burnt-out film)."""
from __future__ import annotations

import io
import zipfile

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 or uint16 array: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(".png", image)
    assert ok, "cv2 could not encode the PNG"
    return encoded.tobytes()


def radiograph(size=(256, 224), pneumonia: bool = False, seed: int = 0) -> np.ndarray:
    """A frontal chest radiograph drawn from its anatomy, which the input guard ACCEPTS as a chest X-ray: use it
    where a test needs a decision (a label). Trunk and arms, two dark lung fields crossed by posterior ribs,
    clavicles, mediastinum and spine, the heart bulging to the patient's left, diaphragm domes; bone white, air
    black, as displayed. `pneumonia` adds a bright consolidation in the right lung (image left). uint8 (H, W)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w), 15, np.float32)
    trunk = np.array([[0.12, 0.0], [0.88, 0.0], [0.97, 0.25], [0.95, 1.0], [0.05, 1.0], [0.03, 0.25]])
    cv2.fillPoly(img, [(trunk * [w, h]).astype(np.int32)], 120)
    for side in (-1, 1):
        x = int(w / 2 + side * w * 0.47)
        cv2.line(img, (x, int(0.15 * h)), (x, h), 105, int(0.07 * w))
        cv2.line(img, (x, int(0.15 * h)), (x, h), 175, int(0.02 * w))
    lungs = np.zeros((h, w), np.float32)
    for side in (-1, 1):
        cx = w / 2 + side * w * 0.2
        outline = np.array([[cx - side * 0.08 * w, 0.14 * h], [cx + side * 0.06 * w, 0.16 * h],
                            [cx + side * 0.17 * w, 0.45 * h], [cx + side * 0.19 * w, 0.78 * h],
                            [cx - side * 0.04 * w, 0.70 * h], [cx - side * 0.11 * w, 0.6 * h],
                            [cx - side * 0.1 * w, 0.25 * h]])
        cv2.fillPoly(lungs, [outline.astype(np.int32)], 1)
    img *= 1 - 0.6 * cv2.GaussianBlur(lungs, (0, 0), w * 0.015)
    cv2.ellipse(img, (int(w * 0.55), int(h * 0.6)), (int(w * 0.16), int(h * 0.13)), -15, 0, 360, 150, -1)
    cv2.rectangle(img, (int(w * 0.45), int(h * 0.05)), (int(w * 0.55), int(h * 0.62)), 160, -1)
    cv2.rectangle(img, (int(w * 0.475), 0), (int(w * 0.525), h), 185, -1)
    ribs = np.zeros((h, w), np.float32)
    for k in range(10):
        y0 = h * (0.13 + k * 0.065)
        xs = np.linspace(0, 0.42 * w, 40)
        ys = y0 + 0.25 * h * (xs / (0.42 * w)) ** 1.6 - 0.05 * h * np.sin(np.pi * xs / (0.42 * w))
        for side in (-1, 1):
            pts = np.stack([w / 2 + side * (0.03 * w + xs), ys], 1).astype(np.int32)
            cv2.polylines(ribs, [pts], False, 1, max(2, int(0.012 * h)))
    img += 45 * cv2.GaussianBlur(ribs, (0, 0), 1.5)
    for side in (-1, 1):
        cv2.line(img, (int(w * (0.5 + side * 0.05)), int(h * 0.14)), (int(w * (0.5 + side * 0.33)), int(h * 0.09)),
                 200, max(3, int(0.02 * h)))
    abdomen = np.zeros((h, w), np.float32)
    for side in (-1, 1):
        cv2.ellipse(abdomen, (int(w / 2 + side * w * 0.2), int(h * 0.86)), (int(w * 0.24), int(h * 0.12)), 0, 180,
                    360, 1, -1)
    cv2.rectangle(abdomen, (int(w * 0.05), int(h * 0.86)), (int(w * 0.95), h), 1, -1)
    img = np.maximum(img, 150 * cv2.GaussianBlur(abdomen, (0, 0), 3) * (img > 20))
    texture = cv2.resize(rng.normal(0, 6, (24, 24)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = cv2.GaussianBlur(img + texture, (0, 0), 2) + rng.normal(0, 3, (h, w))
    img = np.clip(img, 0, 255).astype(np.uint8)
    if pneumonia:
        cv2.circle(img, (int(0.3 * w), int(0.55 * h)), int(0.08 * min(h, w)), 235, -1)
    return img


def radiograph_png(seed: int, pneumonia: bool) -> bytes:
    """A 256×224 drawn radiograph as PNG bytes, with a bright blob where PNEUMONIA (the site and record tests'
    labelled images: the tiny bundle's scores separate them somewhat)."""
    image = radiograph((256, 224), seed=seed)
    if pneumonia:
        cv2.circle(image, (70, 140), 22, 235, -1)
    return png_bytes(image)


def toy_chest(size=(256, 224), pneumonia: bool = False, seed: int = 0,
              blob_at: tuple[float, float] | None = None) -> np.ndarray:
    """The toy the tiny bundles learn: a dark background, two bright-ish lung fields and a spine; with
    `pneumonia`, a bright blob (consolidation) in one lung, where a CAM should peak. The input guard does NOT
    accept it as a chest X-ray: a result on it is "not assessed" (no label). `blob_at` = (row, col) as fractions
    places the consolidation. uint8 (H, W)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w), rng.uniform(20, 50), np.float32)
    for cx in (0.3, 0.7):  # lung fields of varying size, place and density, as between real patients
        centre = (int((cx + rng.uniform(-0.04, 0.04)) * w), int(rng.uniform(0.45, 0.55) * h))
        axes = (int(rng.uniform(0.12, 0.18) * w), int(rng.uniform(0.25, 0.35) * h))
        cv2.ellipse(img, centre, axes, rng.uniform(-10, 10), 0, 360, rng.uniform(70, 110), -1)
    cv2.rectangle(img, (int(0.47 * w), int(0.1 * h)), (int(0.53 * w), int(0.95 * h)), rng.uniform(170, 220), -1)
    texture = cv2.resize(rng.normal(0, 25, (8, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img += texture
    if pneumonia:
        r, c = blob_at or (rng.uniform(0.35, 0.65), rng.choice([0.3, 0.7]))
        cv2.circle(img, (int(c * w), int(r * h)), int(0.08 * min(h, w)), 230, -1)
    img = cv2.GaussianBlur(img, (0, 0), 3) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def colour_photo(h=360, w=480, seed=0) -> np.ndarray:
    """A smooth random colour field: what a photograph looks like at thumbnail scale."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (5, 6, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def document(h=800, w=600, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    page = Image.new("L", (w, h), 250)
    draw = ImageDraw.Draw(page)
    draw.text((50, 40), "DISCHARGE SUMMARY", fill=0, font=ImageFont.load_default(size=28))
    font = ImageFont.load_default(size=14)
    words = "the patient was seen today and is well no acute findings follow up in two weeks".split()
    for y in range(100, h - 60, 22):
        draw.text((50, y), " ".join(rng.choice(words, 9)), fill=20, font=font)
    return np.asarray(page)


def ct_slice(n=512, seed=0) -> np.ndarray:
    """Axial chest CT: air black, body ellipse, two dark lungs, heart, spine, ribs in a ring, the table."""
    rng = np.random.default_rng(seed)
    a = np.zeros((n, n), np.float32)
    c = (n // 2, n // 2)
    cv2.ellipse(a, c, (int(n * 0.42), int(n * 0.3)), 0, 0, 360, 100, -1)
    cv2.ellipse(a, c, (int(n * 0.39), int(n * 0.27)), 0, 0, 360, 135, -1)
    for side in (-1, 1):
        cv2.ellipse(a, (c[0] + side * int(n * 0.18), c[1]), (int(n * 0.14), int(n * 0.2)), 0, 0, 360, 12, -1)
    cv2.ellipse(a, (c[0] + int(n * 0.04), c[1] - int(n * 0.02)), (int(n * 0.09), int(n * 0.1)), 0, 0, 360, 145, -1)
    cv2.circle(a, (c[0], c[1] + int(n * 0.2)), int(n * 0.045), 240, -1)
    for t in np.linspace(0, 2 * np.pi, 14, endpoint=False):
        cv2.circle(a, (int(c[0] + n * 0.37 * np.cos(t)), int(c[1] + n * 0.26 * np.sin(t))), 6, 230, -1)
    cv2.rectangle(a, (int(n * 0.05), int(n * 0.83)), (int(n * 0.95), int(n * 0.86)), 170, -1)
    return np.clip(cv2.GaussianBlur(a, (0, 0), 1) + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8)


def overexposed() -> np.ndarray:
    """Burnt out: almost all white, a little structure left in one corner."""
    a = np.full((300, 300), 255, np.uint8)
    a[:110, :110] = radiograph((110, 110))
    return a


def sample_zip(per_class: int = 6, classes=("NORMAL", "PNEUMONIA")) -> bytes:
    """A site's labelled sample as a reader uploads it: my-site/{NORMAL,PNEUMONIA}/ (or the classes given) of drawn
    radiographs (a bright blob in all but the first class), a holiday photo among the NORMALs and a README."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for k, label in enumerate(classes):
            for i in range(per_class):
                image = radiograph((256, 224), seed=200 * k + i)
                if k:
                    cv2.circle(image, (70, 140), 22, 235, -1)
                z.writestr(f"my-site/{label}/{i}.png", png_bytes(image))
        z.writestr("my-site/NORMAL/holiday.png", png_bytes(colour_photo(seed=4)))
        z.writestr("my-site/README.txt", "labelled by Dr. X")
    return buffer.getvalue()
