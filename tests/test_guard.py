"""model.core.guard.check: uploads that are not frontal chest radiographs are flagged, adults are flagged for a
pediatric bundle, and the check is fast and never raises.

Every input is generated here; nothing is read from ../shared. A drawn chest phantom is NOT a real radiograph:
that it passes shows the check is not flagging everything, nothing more. The real false-alarm and catch rates are
the held-out measurements in model/guard_params/metrics.json (docs/GUARD.md).
"""
from __future__ import annotations

import io
import json
import shutil
import time

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

import model.core.guard as guard
from model.core.guard import GuardError, check, load_params
from model.io import Decoded, decode


# ---------------------------------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------------------------------
def chest_phantom(size=(512, 448), seed: int = 0) -> np.ndarray:
    """A frontal chest radiograph drawn from its anatomy: trunk and arms, two dark lung fields crossed by
    posterior ribs, clavicles, mediastinum and spine, the heart bulging to the patient's left, diaphragm domes.
    Bone white, air black, as displayed."""
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
    a[:110, :110] = chest_phantom((110, 110))
    return a


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def dicom(arr: np.ndarray, **elements) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr, np.uint8).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def codes(data: bytes, **kwargs) -> set[str]:
    """Warning codes the guard adds to this upload's result."""
    return {w["code"] for w in check(decode(data), **kwargs)}


def all_codes(data: bytes) -> set[str]:
    """Every warning code a result carries: the decoder's and the guard's, as analyse() puts them together."""
    decoded = decode(data)
    return {w["code"] for w in decoded.warnings + check(decoded)}


# ---------------------------------------------------------------------------------------------------------------------
# What is flagged
# ---------------------------------------------------------------------------------------------------------------------
def test_a_drawn_chest_radiograph_is_not_flagged():
    for seed in range(3):
        assert check(decode(png(chest_phantom(seed=seed)))) == []


@pytest.mark.parametrize("make, also", [
    (lambda: colour_photo(), set()),
    (lambda: cv2.cvtColor(colour_photo(seed=3), cv2.COLOR_RGB2GRAY), set()),
    (lambda: document(), set()),
    (lambda: ct_slice(), set()),
    (lambda: chest_phantom()[:40, :60], {"too_small"}),
    (lambda: np.full((300, 300), 128, np.uint8), {"blank_image"}),
    (lambda: overexposed(), {"saturated_image"}),
], ids=["colour-photo", "gray-photo", "document", "ct-slice", "tiny", "blank", "saturated"])
def test_pictures_that_are_not_chest_radiographs_are_flagged(make, also):
    found = all_codes(png(make()))
    assert "not_chest_xray" in found
    assert also <= found


def test_the_decoders_blank_warning_is_not_repeated():
    decoded = decode(png(np.zeros((200, 200), np.uint8)))
    assert [w["code"] for w in decoded.warnings] == ["blank_image"]
    assert [w["code"] for w in check(decoded)] == ["not_chest_xray"]


@pytest.mark.parametrize("elements, expected", [
    ({"Modality": "CT"}, {"not_chest_xray"}),
    ({"Modality": "MR"}, {"not_chest_xray"}),
    ({"BodyPartExamined": "HAND"}, {"not_chest_xray"}),
    ({"ViewPosition": "LL"}, {"not_chest_xray", "lateral_view"}),
    ({"ViewPosition": "LATERAL"}, {"not_chest_xray", "lateral_view"}),
    ({"ViewPosition": "PA", "BodyPartExamined": "CHEST"}, set()),
    ({"ViewPosition": "AP", "BodyPartExamined": "CHEST", "Modality": "CR"}, set()),
])
def test_dicom_header_fields_decide_when_they_can(elements, expected):
    # The pixels are a drawn chest, so anything flagged comes from the header.
    assert codes(dicom(chest_phantom(), **elements)) == expected


def test_messages_are_plain_and_say_why():
    warnings = check(decode(dicom(chest_phantom(), Modality="CT")))
    message = next(w["message"] for w in warnings if w["code"] == "not_chest_xray")
    assert "CT" in message and "frontal chest X-ray" in message
    for w in warnings + check(decode(png(document()))) + check(decode(png(np.zeros((20, 20), np.uint8)))):
        assert set(w) == {"code", "message"} and w["message"][0].isupper() and w["message"].endswith(".")


# ---------------------------------------------------------------------------------------------------------------------
# Population
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def adult_score(monkeypatch):
    """Make the adult detector say `value` without touching the radiograph detector."""
    real = guard.mlp

    def set_to(value):
        monkeypatch.setattr(guard, "mlp", lambda x, p, prefix: np.array([value]) if prefix == "pop_"
                            else real(x, p, prefix))
    return set_to


def test_adults_are_flagged_only_for_a_pediatric_bundle(adult_score):
    data = png(chest_phantom())
    adult_score(0.99)
    assert codes(data, population="pediatric 1-5 years") == {"outside_intended_population"}
    assert codes(data, population="Pediatric") == {"outside_intended_population"}
    assert codes(data, population="adult") == set()
    assert codes(data, population=None) == set()
    adult_score(0.0)
    assert codes(data, population="pediatric 1-5 years") == set()


def test_population_is_not_judged_for_pictures_that_are_not_radiographs(adult_score):
    adult_score(0.99)
    for picture in (document(), ct_slice(), colour_photo()):
        found = codes(png(picture), population="pediatric 1-5 years")
        assert "not_chest_xray" in found and "outside_intended_population" not in found


def test_population_message_names_the_population(adult_score):
    adult_score(0.99)
    (w,) = check(decode(png(chest_phantom())), population="pediatric 1-5 years")
    assert "adult" in w["message"] and "pediatric 1-5 years" in w["message"]


# ---------------------------------------------------------------------------------------------------------------------
# Robustness and cost
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pixels", [
    np.zeros((0, 0), np.uint8), np.zeros((1, 1), np.uint8), np.zeros((1, 5000), np.uint8),
    np.full((5000, 1), 200, np.uint8), np.zeros((64, 64), np.uint8), np.zeros((64, 5000), np.uint8),
    np.random.default_rng(0).integers(0, 256, (64, 20000), dtype=np.uint8),
    np.zeros((10, 10, 3), np.uint8), np.zeros((100, 100), np.float32), np.zeros((100,), np.uint8),
    np.full((300, 200), np.nan), np.dstack([chest_phantom()] * 3),
    chest_phantom()[::-1], chest_phantom().T.copy(), np.asfortranarray(chest_phantom()),
    chest_phantom()[::3, ::2],
], ids=["0x0", "1x1", "1x5000", "5000x1", "64x64-black", "64x5000", "noise-strip", "rgb", "float", "1-d", "nan",
        "rgb-chest",
        "upside-down", "transposed", "fortran-order", "strided-view"])
def test_never_raises_on_odd_arrays(pixels):
    warnings = check(Decoded(pixels=pixels, meta={"modality": None, "body_part": 3}, warnings=[]))
    assert isinstance(warnings, list)
    assert all(isinstance(w["code"], str) and isinstance(w["message"], str) for w in warnings)
    assert "guard_unavailable" not in {w["code"] for w in warnings}


def test_is_fast_even_for_a_large_upload():
    big = cv2.resize(chest_phantom(), (2500, 3000))
    decoded = Decoded(pixels=big, meta={}, warnings=[])
    check(decoded, population="pediatric")  # parameters load once
    times = []
    for _ in range(15):
        start = time.perf_counter()
        check(decoded, population="pediatric")
        times.append(time.perf_counter() - start)
    assert np.median(times) < 0.020


def test_a_failing_check_says_so_instead_of_raising(monkeypatch):
    monkeypatch.setattr(guard, "features", lambda pixels: 1 / 0)
    (w,) = check(decode(png(chest_phantom())))
    assert w["code"] == "guard_unavailable"


# ---------------------------------------------------------------------------------------------------------------------
# The committed parameters
# ---------------------------------------------------------------------------------------------------------------------
def test_parameters_are_refused_when_altered(tmp_path):
    folder = tmp_path / "guard"
    shutil.copytree(guard.PARAMS_DIR, folder)
    data = bytearray((folder / "guard.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "guard.npz").write_bytes(bytes(data))
    with pytest.raises(GuardError, match="sha256"):
        load_params(folder)


def test_missing_parameters_make_the_check_say_it_did_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "PARAMS_DIR", tmp_path / "nowhere")
    with pytest.raises(GuardError):
        load_params()
    assert [w["code"] for w in check(decode(png(chest_phantom())))] == ["guard_unavailable"]


def test_committed_parameters_are_small_verified_and_measured():
    assert (guard.PARAMS_DIR / "guard.npz").stat().st_size < 1_000_000
    load_params()
    info = json.loads((guard.PARAMS_DIR / "metrics.json").read_text())
    not_cxr, population = info["metrics"]["not_chest_xray"], info["metrics"]["population"]
    # Held-out real radiographs (by patient) and held-out pictures: the targets the guard was built to.
    assert not_cxr["false_alarm_on_real_radiographs"]["n"] > 1000
    assert not_cxr["false_alarm_on_real_radiographs"]["rate"] <= 0.01
    assert not_cxr["catch_rate_on_non_radiographs"]["rate"] >= 0.95
    assert population["catch_rate_on_adults"]["n"] > 100
    assert population["false_alarm_on_children"]["n"] > 500


def test_model_never_imports_training():
    source = (guard.PARAMS_DIR.parent / "guard.py").read_text()
    assert "import training" not in source and "from training" not in source
