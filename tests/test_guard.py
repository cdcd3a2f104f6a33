"""model.core.guard.check: uploads that are not frontal chest radiographs are flagged, adults are flagged for a
pediatric bundle, and the check is fast and never raises.

Every input is generated here (tests/helpers/images.py); nothing is read from ../shared. A drawn `radiograph` is
NOT a real radiograph: that it passes shows the check is not flagging everything, nothing more. The real false-alarm
and catch rates are the held-out measurements in model/guard_params/metrics.json (docs/GUARD.md).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import model.core.guard as guard
from model.core.guard import GuardError, check, load_params
from model.io import Decoded, decode

from helpers.dicom import secondary_capture
from helpers.images import colour_photo, ct_slice, document, overexposed, png_bytes, radiograph


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
        assert check(decode(png_bytes(radiograph((512, 448), seed=seed)))) == []


@pytest.mark.parametrize("make, also", [
    (lambda: colour_photo(), set()),
    (lambda: cv2.cvtColor(colour_photo(seed=3), cv2.COLOR_RGB2GRAY), set()),
    (lambda: document(), set()),
    (lambda: ct_slice(), set()),
    (lambda: radiograph((512, 448))[:40, :60], {"too_small"}),
    (lambda: np.full((300, 300), 128, np.uint8), {"blank_image"}),
    (lambda: overexposed(), {"saturated_image"}),
], ids=["colour-photo", "gray-photo", "document", "ct-slice", "tiny", "blank", "saturated"])
def test_pictures_that_are_not_chest_radiographs_are_flagged(make, also):
    found = all_codes(png_bytes(make()))
    assert "not_chest_xray" in found
    assert also <= found


def test_the_decoders_blank_warning_is_not_repeated():
    decoded = decode(png_bytes(np.zeros((200, 200), np.uint8)))
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
    assert codes(secondary_capture(radiograph((512, 448)), **elements)) == expected


def test_messages_are_plain_and_say_why():
    warnings = check(decode(secondary_capture(radiograph((512, 448)), Modality="CT")))
    message = next(w["message"] for w in warnings if w["code"] == "not_chest_xray")
    assert "CT" in message and "frontal chest X-ray" in message
    for w in warnings + check(decode(png_bytes(document()))) + check(decode(png_bytes(np.zeros((20, 20), np.uint8)))):
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
    data = png_bytes(radiograph((512, 448)))
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
        found = codes(png_bytes(picture), population="pediatric 1-5 years")
        assert "not_chest_xray" in found and "outside_intended_population" not in found


def test_population_message_names_the_population(adult_score):
    adult_score(0.99)
    (w,) = check(decode(png_bytes(radiograph((512, 448)))), population="pediatric 1-5 years")
    assert "adult" in w["message"] and "pediatric 1-5 years" in w["message"]


# ---------------------------------------------------------------------------------------------------------------------
# Robustness and cost
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pixels", [
    np.zeros((0, 0), np.uint8), np.zeros((1, 1), np.uint8), np.zeros((1, 5000), np.uint8),
    np.full((5000, 1), 200, np.uint8), np.zeros((64, 64), np.uint8), np.zeros((64, 5000), np.uint8),
    np.random.default_rng(0).integers(0, 256, (64, 20000), dtype=np.uint8),
    np.zeros((10, 10, 3), np.uint8), np.zeros((100, 100), np.float32), np.zeros((100,), np.uint8),
    np.full((300, 200), np.nan), np.dstack([radiograph((512, 448))] * 3),
    radiograph((512, 448))[::-1], radiograph((512, 448)).T.copy(), np.asfortranarray(radiograph((512, 448))),
    radiograph((512, 448))[::3, ::2],
], ids=["0x0", "1x1", "1x5000", "5000x1", "64x64-black", "64x5000", "noise-strip", "rgb", "float", "1-d", "nan",
        "rgb-chest",
        "upside-down", "transposed", "fortran-order", "strided-view"])
def test_never_raises_on_odd_arrays(pixels):
    warnings = check(Decoded(pixels=pixels, meta={"modality": None, "body_part": 3}, warnings=[]))
    assert isinstance(warnings, list)
    assert all(isinstance(w["code"], str) and isinstance(w["message"], str) for w in warnings)
    assert "guard_unavailable" not in {w["code"] for w in warnings}


def test_a_large_upload_is_checked_like_its_small_self():
    # Its speed is a figure of `python -m model bench` (guard_ms_3000x2500), not a timed test.
    small = radiograph((512, 448))
    big = cv2.resize(small, (2500, 3000))
    codes = [[w["code"] for w in check(Decoded(pixels=p, meta={}, warnings=[]), population="pediatric")]
             for p in (small, big)]
    assert codes[0] == codes[1] == []


def test_a_failing_check_says_so_instead_of_raising(monkeypatch):
    monkeypatch.setattr(guard, "features", lambda pixels: 1 / 0)
    (w,) = check(decode(png_bytes(radiograph((512, 448)))))
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
    assert [w["code"] for w in check(decode(png_bytes(radiograph((512, 448)))))] == ["guard_unavailable"]


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
    source = Path(guard.__file__).read_text()  # model/core/guard.py
    assert "import training" not in source and "from training" not in source
