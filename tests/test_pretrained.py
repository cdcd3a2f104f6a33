"""Issue 22: ImageNet backbones read out of registry packages, the pretrained member, and the val-only choices
(member subsets, softmax vs two-stage). No package is downloaded here: the TF.js format is built in the test."""
import base64
import json

import numpy as np
import pandas as pd
import pytest

from model.core.metrics import roc_auc
from training.backbones import tfjs_weights


def tfjs_files(tensors: dict[str, np.ndarray]) -> tuple[str, str]:
    """A TF.js layers model's weights manifest (uint8-quantised, unquoted keys as nsfwjs minifies them) and its
    shard as a base64 string inside a JS module."""
    entries, blob = [], b""
    for name, values in tensors.items():
        lo, hi = float(values.min()), float(values.max())
        scale = (hi - lo) / 255 or 1.0
        q = np.round((values - lo) / scale).astype(np.uint8)
        shape = ",".join(str(d) for d in values.shape)
        entries.append(f'{{name:"{name}",shape:[{shape}],dtype:"float32",'
                       f'quantization:{{min:{lo!r},scale:{scale!r},dtype:"uint8"}}}}')
        blob += q.tobytes()
    model_js = "weightsManifest:[{paths:[\"group1-shard1of1\"],weights:[" + ",".join(entries) + "]}]"
    shard_js = 'h.exports="' + base64.b64encode(blob).decode() + '"' + " " * 10
    return model_js, shard_js


def test_tfjs_weights_are_dequantised_in_manifest_order():
    rng = np.random.default_rng(0)
    tensors = {"Conv1/kernel": rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
               "bn_Conv1/gamma": rng.uniform(0.5, 2, size=(4,)).astype(np.float32)}
    model_js, shard_js = tfjs_files({**tensors, "pad": np.zeros(800, np.float32)})  # a blob long enough to find
    out = tfjs_weights(model_js, shard_js)
    assert list(out) == ["Conv1/kernel", "bn_Conv1/gamma", "pad"]
    for name, values in tensors.items():
        assert out[name].shape == values.shape
        step = (values.max() - values.min()) / 255
        assert np.abs(out[name] - values).max() <= step / 2 + 1e-6


def test_a_shard_shorter_than_its_manifest_is_refused():
    model_js, shard_js = tfjs_files({"a/kernel": np.arange(2000, dtype=np.float32)})
    with pytest.raises(ValueError, match="covers"):
        tfjs_weights(model_js.replace("shape:[2000]", "shape:[1000]"), shard_js)


def fake_backbone(folder, name: str, backbone, seed: int):
    """`backbone` with random weights (BatchNorm variances near 1), written as a fetched backbone `name` would be:
    the weights file and its provenance record with the sha256."""
    from model.core.bundle import sha256_file

    rng = np.random.default_rng(seed)
    for var in backbone.weights:
        var.assign(rng.normal(0, 0.01, var.shape).astype("float32") + (1.0 if "variance" in var.path else 0.0))
    backbone.save_weights(folder / f"{name}.weights.h5")
    (folder / f"{name}.json").write_text(json.dumps(
        {"name": name, "file": f"{name}.weights.h5", "sha256": sha256_file(folder / f"{name}.weights.h5"),
         "package": "a registry package", "version": "0", "licence": "MIT"}))
    return backbone


def test_pretrained_member_keeps_batchnorm_frozen_and_takes_the_fetched_weights(tmp_path):
    import keras

    from training.architectures import last_conv_layer, mobilenet_v2_imagenet
    from training.backbones import load_backbone

    backbone = fake_backbone(tmp_path, "mobilenet_v2_nsfwjs", keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), alpha=1.0, include_top=False, weights=None), seed=1)
    member = mobilenet_v2_imagenet({"height": 96, "width": 96, "channels": 1}, task="multitask")
    record = load_backbone(member, "mobilenet_v2_nsfwjs", tmp_path)
    assert record["licence"] == "MIT" and record["layers_copied"] > 100
    np.testing.assert_array_equal(member.get_layer("Conv1").get_weights()[0],
                                  backbone.get_layer("Conv1").get_weights()[0])
    assert all(not layer.trainable for layer in member.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert last_conv_layer(member) == "out_relu"
    out = member(np.full((1, 96, 96, 1), 128, np.float32))
    assert set(out) == {"prediction", "subtype"}

    (tmp_path / "mobilenet_v2_nsfwjs.weights.h5").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        load_backbone(member, "mobilenet_v2_nsfwjs", tmp_path)


def test_the_xception_member_takes_every_backbone_layer_also_those_keras_numbers(tmp_path):
    """Xception leaves its four 1×1 shortcut convolutions (and their BatchNorms) unnamed, so Keras numbers them per
    process: `conv2d` in the member, `conv2d_4` in the copy the weights are read into. Matching by name left them
    random (and frozen) in the first Xception run; they must be copied like the rest."""
    import keras

    from training.architectures import xception_imagenet
    from training.backbones import load_backbone

    backbone = fake_backbone(tmp_path, "xception_imagenet", keras.applications.Xception(
        input_shape=(71, 71, 3), include_top=False, weights=None), seed=2)
    member = xception_imagenet({"height": 71, "width": 71, "channels": 1}, n_outputs=3, task="multiclass")
    record = load_backbone(member, "xception_imagenet", tmp_path)
    theirs = [layer for layer in backbone.layers if layer.weights]
    ours = [layer for layer in member.layers if layer.weights][:len(theirs)]
    assert record["layers_copied"] == len(theirs) == 80
    shortcuts = [(a, b) for a, b in zip(theirs, ours) if not a.name.startswith("block")]
    assert len(shortcuts) == 8 and any(a.name != b.name for a, b in shortcuts)  # named apart, paired all the same
    for a, b in zip(theirs, ours):
        for x, y in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(x, y)
    frozen = {layer.name for layer in member.layers if layer.weights and not layer.trainable}
    assert "block11_sepconv3" in frozen and "block12_sepconv1" not in frozen and "prediction" not in frozen
    convs = [b for a, b in shortcuts if isinstance(b, keras.layers.Conv2D)]
    assert convs[-1].name not in frozen and convs[0].name in frozen  # the exit flow's shortcut learns with it


def test_the_probes_feature_cache_names_the_weights_loaded_not_only_the_file(tmp_path, monkeypatch):
    """The frozen-feature cache was keyed by the backbone file's sha256, so features made while the loader skipped
    Xception's numbered layers would have been reused after the fix. The key now digests the weights in the model."""
    import keras

    import training.backbones
    from training.probe import backbone_model, weights_digest

    fake_backbone(tmp_path, "mobilenet_v2_nsfwjs", keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), alpha=1.0, include_top=False, weights=None), seed=3)
    spec = {"height": 64, "width": 64, "channels": 1}
    loaded = weights_digest(backbone_model("mobilenet_v2_nsfwjs", tmp_path, spec))
    assert weights_digest(backbone_model("mobilenet_v2_nsfwjs", tmp_path, spec)) == loaded  # the same numbers
    real = training.backbones.load_backbone

    def skips_the_last_layer(model, name, folder):  # a loader with a bug: the same file, other numbers
        record = real(model, name, folder)
        last = [layer for layer in model.layers if layer.weights][-1]
        last.set_weights([w * 0 for w in last.get_weights()])
        return record

    monkeypatch.setattr(training.backbones, "load_backbone", skips_the_last_layer)
    assert weights_digest(backbone_model("mobilenet_v2_nsfwjs", tmp_path, spec)) != loaded


def test_member_subsets_and_the_two_stage_decision_are_compared_on_val(tmp_path):
    from training.evaluate import compare_subsets
    from training.heads import compare_decisions

    classes = ["NORMAL", "BACTERIAL", "VIRAL"]
    y = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    good = np.array([[.8, .1, .1], [.7, .2, .1], [.1, .8, .1], [.2, .7, .1], [.1, .2, .7], [.1, .3, .6]])
    poor = np.array([[.2, .7, .1], [.7, .2, .1], [.1, .8, .1], [.2, .1, .7], [.1, .2, .7], [.6, .3, .1]])
    rows = {tuple(r["members"]): r for r in compare_subsets("multiclass", classes, y, {"a": good, "b": poor})}
    assert rows[("a",)]["val_accuracy"] == 1.0 and rows[("b",)]["val_accuracy"] == pytest.approx(3 / 6)
    assert set(rows) == {("a",), ("b",), ("a", "b")}

    binary, multiclass = tmp_path / "b", tmp_path / "m"
    for run in (binary, multiclass):
        run.mkdir()
    # the binary head misses the second viral image; the softmax calls the first normal image bacterial
    (binary / "scores-val.json").write_text(json.dumps({"y": y[:, 1:].sum(1, keepdims=True).tolist(),
                                                        "ensemble": [[.1], [.2], [.9], [.8], [.7], [.3]]}))
    (binary / "evaluation.json").write_text(json.dumps({"operating_points": [{"name": "balanced", "threshold": .5}]}))
    (multiclass / "scores-val.json").write_text(json.dumps({"classes": classes, "y": y.tolist(),
                                                            "ensemble": poor.tolist()}))
    result = compare_decisions(binary, multiclass)
    assert result["softmax"]["accuracy"] == pytest.approx(3 / 6)
    assert result["two_stage"]["accuracy"] == pytest.approx(4 / 6)  # 2 normal + 1 bacterial + 1 viral right
    assert result["two_stage"]["recall"]["NORMAL"] == 1.0


def test_a_linear_probe_finds_a_real_signal_and_never_scores_a_patient_with_a_head_that_saw_them():
    from training.probe import fit_logistic, out_of_fold, patient_folds, predict_logistic, probe

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), 3).astype(str)  # three images per patient
    folds = patient_folds(patients)
    assert all(len(set(folds[patients == p])) == 1 for p in set(patients))  # a patient never straddles folds
    assert len(set(folds)) == 5

    # A linear signal: the probe finds it in train and keeps it on new patients.
    x = rng.normal(size=(180, 8))
    y = (x[:, 0] - x[:, 1] + 0.3 * rng.normal(size=180) > 0).astype(float)
    w = fit_logistic(x, y, 1e-3)
    assert np.mean((predict_logistic(w, x) > 0.5) == y) > 0.9
    result = probe(x[:120], y[:120], patients[:120], x[120:], y[120:], patients[120:])
    assert result["val_auc"] > 0.9 and result["val_cv_auc"] > 0.85 and result["n_val"] == 60

    # Features that only name the patient, labels drawn per patient: a head that saw a patient knows their label;
    # out-of-fold predictions cannot, so their AUC is chance.
    onehot = np.eye(60)[np.repeat(np.arange(60), 3)] + 0.01 * rng.normal(size=(180, 60))
    labels = np.repeat(rng.integers(0, 2, 60), 3).astype(float)
    seen = predict_logistic(fit_logistic(onehot, labels, 1e-4), onehot)
    assert roc_auc(labels, seen) > 0.99
    assert abs(roc_auc(labels, out_of_fold(onehot, labels, folds, 1e-4)) - 0.5) < 0.2


def test_probe_reads_a_runs_split_and_a_bundles_member_features(tiny_bundles, tmp_path):
    from training.__main__ import main

    run = tiny_bundles.parent / "run"
    args = ["probe", "--run", str(run), "--data", str(tiny_bundles.parent / "data"), "--bundle",
            str(tiny_bundles / "pneumonia-kermany"), "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "p.json")]
    assert main(args) == 0
    result = json.loads((tmp_path / "p.json").read_text())
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 1  # a second probe of the same images reuses it
    assert main(args) == 0 and json.loads((tmp_path / "p.json").read_text())["features"] == result["features"]
    members = json.loads((tiny_bundles / "pneumonia-kermany" / "manifest.json").read_text())["members"]
    assert result["members"] == [m["name"] for m in members] and result["features"] > 0
    split = pd.read_csv(run / "split.csv")
    question = result["normal_vs_pneumonia"]
    assert question["n_train"] == (split["split"] == "train").sum()
    assert question["n_val"] == (split["split"] == "val").sum()
    assert set(question) >= {"penalty", "train_cv_auc", "val_auc", "val_cv_auc"}
    assert "test and external not scored" in result["split_used"]


def test_a_size_study_row_takes_every_number_from_the_runs_val_chosen_evaluation(tmp_path):
    import keras

    from training.size_study import study

    run = tmp_path / "size-16"
    (run / "members").mkdir(parents=True)
    inputs = keras.Input((16, 16, 1))
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3)(inputs)))).save(run / "members" / "cnn.keras")
    (run / "members.json").write_text(json.dumps([{"name": "cnn", "file": "members/cnn.keras", "params": 45,
                                                    "epochs_run": 12, "train_seconds": 60.0}]))
    point = {"threshold": 0.7, "accuracy": 0.97, "sensitivity": 0.96, "specificity": 0.99}
    (run / "evaluation.json").write_text(json.dumps({
        "member_val_auc": {"cnn": 0.998},
        "ensemble": {"auc": 0.997, "auc_ci95": [0.99, 0.999], "operating_points": {"balanced": point}},
        "external": {"dataset": "later", "auc": 0.976, "operating_points": {"balanced": {
            "threshold": 0.7, "accuracy": 0.86, "sensitivity": 0.99, "specificity": 0.64}}}}))
    three = tmp_path / "size-16-multiclass"
    three.mkdir()
    (three / "evaluation.json").write_text(json.dumps({
        "task": "multiclass", "member_val_auc": {"cnn": 0.91},
        "ensemble": {"accuracy": 0.79, "bacterial_vs_viral_auc": 0.80, "macro_auc": 0.92},
        "external": {"accuracy": 0.90, "bacterial_vs_viral_auc": 0.98},
        "val_comparison": [{"members": ["cnn"], "val_accuracy": 0.81, "val_bacterial_vs_viral_auc": 0.82}]}))
    assert "val_3class_accuracy" not in study({16: run})["rows"][0]
    row = study({16: run}, {16: three})["rows"][0]
    assert (row["val_3class_accuracy"], row["test_3class_accuracy"], row["test_bacterial_vs_viral_auc"],
            row["external_3class_accuracy"]) == (0.81, 0.79, 0.80, 0.90)
    assert (row["size"], row["val_auc"], row["test_auc"], row["test_accuracy"]) == (16, 0.998, 0.997, 0.97)
    assert (row["external_auc"], row["external_accuracy"], row["external_specificity"]) == (0.976, 0.86, 0.64)
    assert row["balanced_threshold"] == 0.7 and row["latency_ms"] > 0
