"""Issue 22: ImageNet backbones read out of registry packages, the pretrained member, and the val-only choices
(member subsets, softmax vs two-stage). No package is downloaded here: the TF.js format is built in the test."""
import base64
import json

import numpy as np
import pytest

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


def test_pretrained_member_keeps_batchnorm_frozen_and_takes_the_fetched_weights(tmp_path):
    import keras

    from model.core.bundle import sha256_file
    from training.architectures import last_conv_layer, mobilenet_v2_imagenet
    from training.backbones import load_backbone

    backbone = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, include_top=False,
                                              weights=None)
    rng = np.random.default_rng(1)
    for var in backbone.weights:
        var.assign(rng.normal(0, 0.01, var.shape).astype("float32") + (1.0 if "variance" in var.path else 0.0))
    backbone.save_weights(tmp_path / "mnv2.weights.h5")
    (tmp_path / "mobilenet_v2_nsfwjs.json").write_text(json.dumps(
        {"name": "mobilenet_v2_nsfwjs", "file": "mnv2.weights.h5", "sha256": sha256_file(tmp_path / "mnv2.weights.h5"),
         "package": "nsfwjs", "version": "4.3.0", "licence": "MIT"}))
    member = mobilenet_v2_imagenet({"height": 96, "width": 96, "channels": 1}, task="multitask")
    record = load_backbone(member, "mobilenet_v2_nsfwjs", tmp_path)
    assert record["licence"] == "MIT" and record["layers_copied"] > 100
    np.testing.assert_array_equal(member.get_layer("Conv1").get_weights()[0],
                                  backbone.get_layer("Conv1").get_weights()[0])
    assert all(not layer.trainable for layer in member.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert last_conv_layer(member) == "out_relu"
    out = member(np.full((1, 96, 96, 1), 128, np.float32))
    assert set(out) == {"prediction", "subtype"}

    (tmp_path / "mnv2.weights.h5").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        load_backbone(member, "mobilenet_v2_nsfwjs", tmp_path)


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
