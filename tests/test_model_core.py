"""Serving core: bundle verification and loading, ensemble arithmetic, CAMs and overlays, the predict CLI."""
import json

import cv2
import keras
import numpy as np
import pytest

from model.core import bundle as bundle_lib
from model.core.ensemble import Ensemble, Prediction, apply_temperature
from model.core.explain import Explainer, overlay

from helpers.bundles import SPEC, brightness_model, write_bundle
from helpers.images import toy_chest


@pytest.fixture
def two_bundles(tmp_path):
    write_bundle(tmp_path, "alpha", {"a": brightness_model("a"), "b": brightness_model("b", bias=1.0)},
                 temperatures={"a": 1.0, "b": 2.0})
    write_bundle(tmp_path, "beta", {"a": brightness_model("a")})
    return tmp_path


def test_all_good_bundles_load(two_bundles):
    bundles, errors = bundle_lib.load_all(two_bundles)
    assert set(bundles) == {"alpha", "beta"} and errors == {}
    assert [m.name for m in bundles["alpha"].members] == ["a", "b"]


def test_tampered_member_refuses_that_bundle_only(two_bundles):
    path = two_bundles / "alpha" / "members" / "b.keras"
    path.write_bytes(path.read_bytes() + b"\0")
    bundles, errors = bundle_lib.load_all(two_bundles)
    assert set(bundles) == {"beta"}
    assert "b.keras" in errors["alpha"] and "checksum" in errors["alpha"]


def test_missing_member_is_named(two_bundles):
    (two_bundles / "beta" / "members" / "a.keras").unlink()
    bundles, errors = bundle_lib.load_all(two_bundles)
    assert "alpha" in bundles and "missing" in errors["beta"] and "a.keras" in errors["beta"]


def test_broken_manifest_is_reported(two_bundles):
    (two_bundles / "beta" / "manifest.json").write_text("{not json")
    bundles, errors = bundle_lib.load_all(two_bundles)
    assert "alpha" in bundles and "manifest" in errors["beta"]


def test_lambda_layer_is_blocked_by_safe_mode(tmp_path):
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    write_bundle(tmp_path, "evil", {"m": model})
    with pytest.raises(bundle_lib.UnsafeModel, match="Lambda"):
        bundle_lib.load_bundle(tmp_path / "evil")


def test_temperature_scaling():
    p = np.array([[0.1], [0.5], [0.9]])
    assert apply_temperature(p, 1.0, "binary") == pytest.approx(p)
    softer = apply_temperature(p, 2.0, "binary")
    assert softer[1, 0] == pytest.approx(0.5) and 0.1 < softer[0, 0] < 0.5 < softer[2, 0] < 0.9
    probs = np.array([[0.7, 0.2, 0.1]])
    assert apply_temperature(probs, 1.0, "multiclass") == pytest.approx(probs)
    assert apply_temperature(probs, 3.0, "multiclass").sum() == pytest.approx(1.0)
    shifted = apply_temperature(probs, 1.0, "multiclass", [0.0, np.log(2.0), 0.0])  # vector scaling: class 2 ×2
    assert shifted[0] == pytest.approx(np.array([0.7, 0.4, 0.1]) / 1.2)
    assert apply_temperature(probs, 1.0, "multiclass", 0.5) == pytest.approx(probs)  # one number moves nothing


def test_ensemble_is_the_mean_of_calibrated_members(two_bundles):
    bundle = bundle_lib.load_bundle(two_bundles / "alpha")
    ensemble = Ensemble(bundle)
    img = toy_chest((120, 100), pneumonia=True, seed=5)
    prediction = ensemble.predict(img)
    x = cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA)[None, ..., None].astype("float32")
    raw = {m.name: float(m.model(x)[0, 0]) for m in bundle.members}
    expected = {"a": raw["a"], "b": float(apply_temperature(np.array([[raw["b"]]]), 2.0, "binary")[0, 0])}
    assert prediction.members["a"]["PNEUMONIA"] == pytest.approx(expected["a"], abs=1e-5)
    assert prediction.members["b"]["PNEUMONIA"] == pytest.approx(expected["b"], abs=1e-5)
    assert prediction.probability == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
    assert prediction.probabilities["NORMAL"] == pytest.approx(1 - prediction.probability)
    assert prediction.spread == pytest.approx(abs(expected["a"] - expected["b"]), abs=1e-5)


def test_batch_and_single_predictions_agree_without_retracing(two_bundles):
    ensemble = Ensemble(bundle_lib.load_bundle(two_bundles / "beta"))
    imgs = [toy_chest((90, 70), seed=s) for s in range(5)]
    from model.core.preprocess import to_model_input
    batch = ensemble.predict_batch(np.stack([to_model_input(i, SPEC) for i in imgs]))
    singles = [ensemble.predict(i) for i in imgs]
    assert [b.probability for b in batch] == pytest.approx([s.probability for s in singles], abs=1e-5)
    assert ensemble._forward.experimental_get_tracing_count() == 1
    assert ensemble._one.experimental_get_tracing_count() == 1  # the single-image pass, with its feature maps


def test_a_batch_read_ahead_gives_each_file_its_own_result_in_order(two_bundles):
    """analyse_batch reads the next batch on a thread while this one is in the model: the results must still be
    each file's own, in the order given, bad files included, exactly as one file at a time gives them."""
    from model.core.analysis import analyse, analyse_batch

    ensemble = Ensemble(bundle_lib.load_bundle(two_bundles / "beta"))
    files = [(f"chest-{s}.png", cv2.imencode(".png", toy_chest((90 + s, 70), pneumonia=s % 2 == 1, seed=s))[1]
              .tobytes()) for s in range(7)]
    files.insert(3, ("broken.png", b"not an image"))
    files.append(("empty.png", b""))
    seen = []
    results = analyse_batch(files, ensemble, batch=3, progress=lambda done, total: seen.append((done, total)))
    assert [r.file for r in results] == [name for name, _ in files]
    one_by_one = [analyse(data, name, ensemble)[0] for name, data in files]
    for batched, single in zip(results, one_by_one):
        assert (batched.error or {}).get("code") == (single.error or {}).get("code")
        if single.error is None:
            assert batched.probabilities == pytest.approx(single.probabilities, abs=1e-5)
    assert [r.error is not None for r in results] == [n in ("broken.png", "empty.png") for n, _ in files]
    assert seen == [(3, 9), (6, 9), (9, 9)]
    assert analyse_batch([], ensemble) == []


def test_decision_at_threshold():
    p = Prediction(["NORMAL", "PNEUMONIA"], "binary", {"NORMAL": 0.3, "PNEUMONIA": 0.7},
                   {"a": {"NORMAL": 0.2, "PNEUMONIA": 0.8}, "b": {"NORMAL": 0.4, "PNEUMONIA": 0.6}})
    assert p.label(0.5) == "PNEUMONIA" and p.label(0.7) == "PNEUMONIA" and p.label(0.71) == "NORMAL"
    assert p.spread == pytest.approx(0.2)
    multi = Prediction(["A", "B", "C"], "multilabel", {"A": 0.9, "B": 0.2, "C": 0.6}, {})
    assert multi.label({"A": 0.5, "B": 0.1, "C": 0.7}) == ["A", "B"]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam"])
def test_cam_peaks_on_the_planted_signal(two_bundles, method):
    bundle = bundle_lib.load_bundle(two_bundles / "beta")
    img = np.full((160, 120), 10, np.uint8)
    img[100:140, 20:60] = 250  # bright square, lower left
    cams = Explainer(bundle).cams(img, method)
    cam = cams["ensemble"]
    assert cam.shape == (48, 48) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    r, c = np.unravel_index(np.argmax(cv2.resize(cam, (120, 160))), (160, 120))
    assert 95 <= r <= 145 and 15 <= c <= 65, f"{method} peaked at {(r, c)}, outside the planted square"


def test_overlay_keeps_the_upload_size_and_aspect():
    img = toy_chest((300, 200), seed=1)
    cam = np.zeros((48, 48), np.float32)
    cam[:24] = 1.0
    out = overlay(img, cam, opacity=0.5)
    assert out.shape == (300, 200, 3) and out.dtype == np.uint8
    assert overlay(img, cam, opacity=0.0)[..., 0].tolist() == img.tolist()
    top, bottom = out[:100].astype(int), out[200:].astype(int)
    assert top[..., 0].mean() - top[..., 2].mean() > bottom[..., 0].mean() - bottom[..., 2].mean()  # hot = red


def test_predict_cli_loads_each_member_once_for_many_files(two_bundles, tmp_path, monkeypatch, capsys):
    from model.__main__ import main

    files = []
    for i in range(25):
        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), toy_chest((64, 64), seed=i))
    calls = []
    real = keras.saving.load_model
    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setenv("TORAX_BUNDLES", str(two_bundles))
    assert main(["predict", "--bundle", "alpha", "--json", *map(str, files)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert len([c for c in calls if "alpha" in str(c[0])]) == 2  # two members, loaded once each


def test_bench_reports_every_figure_it_names(tiny_bundles, monkeypatch, capsys):
    """`python -m model bench --json` is how speed is checked (benchmarks print figures, tests decide nothing about
    them): on a tiny bundle it must run end to end and give every figure as a positive number."""
    from model.__main__ import main

    monkeypatch.setenv("TORAX_BUNDLES", str(tiny_bundles))
    assert main(["bench", "--json", "--repeats", "2"]) == 0
    figures = json.loads(capsys.readouterr().out)
    timed = ["cold_start_s", "predict_ms", "predict_cam_ms", "guard_ms_3000x2500", "batch_images_per_s",
             "first_batch_s", "naive_predict_ms", "speedup_vs_naive", "record_ms", "record_work_ms", "peak_rss_mb"]
    assert all(isinstance(figures[k], float) and figures[k] > 0 for k in timed), {k: figures.get(k) for k in timed}
    assert figures["bundle"] == "pneumonia-kermany" and figures["machine"]["cores"] >= 1


def test_a_gradcam_after_predict_reuses_its_forward_pass_and_draws_the_same_map(tiny_bundles):
    from model.core.ensemble import Ensemble, features_memo
    from model.core.preprocess import to_model_input

    bundle = bundle_lib.load_bundle(tiny_bundles / "pneumonia-kermany")
    ensemble, explainer = Ensemble(bundle), Explainer(bundle)
    img, other = toy_chest((200, 180), pneumonia=True, seed=11), toy_chest((200, 180), seed=12)
    features_memo.clear()
    cold = {c: explainer.cams(img, "gradcam", c) for c in bundle.classes}  # nothing kept: every member runs

    single = ensemble.predict(img)
    batched = ensemble.predict_batch(to_model_input(img, bundle.input_spec)[None])[0]
    assert single.probabilities == pytest.approx(batched.probabilities, abs=1e-6)
    full, from_features = explainer._compiled_gradcam()
    explainer._cams["compiled"] = (lambda *a: pytest.fail("the members ran again"), from_features)
    for c in bundle.classes:
        warm = explainer.cams(img, "gradcam", c)
        assert warm.keys() == cold[c].keys()
        for name in warm:
            assert np.abs(warm[name] - cold[c][name]).max() < 1e-5, name
    with pytest.raises(pytest.fail.Exception):  # an image predict has not seen needs the whole forward pass
        explainer.cams(other, "gradcam")


def test_compiled_gradcam_matches_tf_keras_vis(tiny_bundles):
    bundle = bundle_lib.load_bundle(tiny_bundles / "pneumonia-kermany")
    explainer = Explainer(bundle)
    img = toy_chest((200, 180), pneumonia=True, seed=7)
    fast = explainer.cams(img, "gradcam")
    from model.core.preprocess import to_model_input
    x = to_model_input(img, bundle.input_spec)
    for member in bundle.members:
        reference = explainer.member_cam(x, member, "gradcam", "PNEUMONIA")  # tf-keras-vis, eager
        if reference.max() > 0:
            assert np.corrcoef(fast[member.name].ravel(), reference.ravel())[0, 1] > 0.98
        assert np.abs(fast[member.name] - reference).max() < 0.1
