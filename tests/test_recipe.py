"""The training recipe for a change of collection: augmentation, the standardising stem, multitask runs cut into
two bundles, the external block, and the Grad-CAM frame audit."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.bundles import make_kermany_folder
from helpers.images import toy_chest


def test_augmentation_keeps_shape_and_dtype_and_changes_the_image():
    from training.augment import augment, erase_frame

    rng = np.random.default_rng(0)
    img = toy_chest((64, 64), seed=1)[..., None]
    out = [augment(img, rng) for _ in range(20)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in out)
    assert np.mean([np.abs(o.astype(int) - img).mean() for o in out]) > 3, "augmentation should alter the image"
    # Frame erasing touches the border only: the centre survives whenever nothing else ran.
    erased = [erase_frame(img[..., 0], np.random.default_rng(s)) for s in range(30)]
    centre = (slice(16, 48), slice(16, 48))
    assert all(np.array_equal(e[centre], img[..., 0][centre]) for e in erased)
    assert any(not np.array_equal(e, img[..., 0]) for e in erased)


def test_batches_cover_every_image_once_per_epoch_and_validation_is_not_augmented():
    from training.augment import Batches

    x = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 1), np.uint8) * 20
    y = np.arange(10, dtype="float32")[:, None]
    train = Batches(x, y, batch_size=4, train=True, seed=0, sample_weight=np.ones(10, "float32"))
    assert len(train) == 3
    seen = np.concatenate([train[i][1][:, 0] for i in range(len(train))])
    assert sorted(seen) == list(range(10))
    xb, yb, wb = train[0]
    assert xb.dtype == np.float32 and wb.shape == (4,)
    val = Batches(x, y, batch_size=4, train=False)
    xv, yv = val[0]
    assert np.array_equal(xv, x[:4].astype(np.float32)) and np.array_equal(yv[:, 0], [0, 1, 2, 3])
    # a batch is a function of (seed, epoch, batch): fetched in another order, or by a resumed run, it is the same
    later = Batches(x, y, batch_size=4, train=True, seed=0, sample_weight=np.ones(10, "float32"))
    later.set_epoch(1)
    train.set_epoch(1)
    for i in (2, 0, 1):
        assert all(np.array_equal(a, b) for a, b in zip(later[i], train[i]))
    first = Batches(x, y, batch_size=4, train=True, seed=0)
    assert not np.array_equal(first.order, train.order)  # each epoch its own order


def test_mixup_blends_images_targets_and_weights_by_one_weight_per_batch():
    """Each mixed row is lam·row + (1 − lam)·another row of the same augmented batch, with one lam per batch, and
    the targets and sample weights are blended with the same partner and weight as the image."""
    from training.augment import Batches

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    y = {"prediction": (np.arange(12) % 2).astype("float32")[:, None],
         "subtype": np.eye(3, dtype="float32")[np.arange(12) % 3]}
    w = np.linspace(0.5, 2.0, 12).astype("float32")
    plain = Batches(x, y, batch_size=6, train=True, seed=5, sample_weight=w)
    mixed = Batches(x, y, batch_size=6, train=True, seed=5, sample_weight=w, mixup=0.4)
    blends = []
    for i in range(len(mixed)):
        (xp, yp, wp), (xm, ym, wm) = plain[i], mixed[i]  # the same augmented images before the blend
        xp, xm = xp.reshape(6, -1).astype("float64"), xm.reshape(6, -1).astype("float64")
        lams = []
        for j in range(6):
            if np.abs(xm[j] - xp[j]).max() < 1e-3:  # its partner was itself
                continue
            fits = []
            for k in range(6):
                d = xp[j] - xp[k]
                lam = 1.0 if k == j else float(np.dot(xm[j] - xp[k], d) / np.dot(d, d))
                fits.append((float(np.abs(lam * xp[j] + (1 - lam) * xp[k] - xm[j]).max()), k, lam))
            err, k, lam = min(fits)
            assert err < 1e-2
            if k != j:
                lams.append(lam)
                for mixed_t, plain_t in ((ym["subtype"], yp["subtype"]), (ym["prediction"], yp["prediction"])):
                    np.testing.assert_allclose(mixed_t[j], lam * plain_t[j] + (1 - lam) * plain_t[k], atol=1e-5)
                assert wm[j] == pytest.approx(lam * wp[j] + (1 - lam) * wp[k], abs=1e-5)
        assert lams and np.ptp(lams) < 1e-4 and 0 <= lams[0] <= 1  # one weight for the whole batch
        blends.append(lams[0])
    assert len(set(np.round(blends, 4))) == len(blends)  # a new weight for every batch
    val = Batches(x, y, batch_size=6, train=False, mixup=0.4)
    assert np.array_equal(val[0][1]["subtype"], y["subtype"][:6])  # validation is never blended


def test_the_stem_standardises_each_image_so_exposure_changes_do_not_reach_the_network():
    import keras

    from training.architectures import ARCHITECTURES

    model = ARCHITECTURES["cnn"]({"height": 32, "width": 32, "channels": 1}, task="binary")
    stem = keras.Model(model.inputs, model.get_layer("standardize").output)
    img = toy_chest((32, 32), seed=3).astype("float32")[None, ..., None]
    darker = img * 0.6 + 10  # another exposure: a linear change of grey levels
    a, b = np.asarray(stem(img)), np.asarray(stem(darker))
    assert np.allclose(a, b, atol=0.05)  # only epsilon in the variance keeps them from being equal
    assert abs(a.mean()) < 1e-3 and a.std() == pytest.approx(1.0, abs=0.02)


def test_multitask_run_becomes_a_binary_and_a_multiclass_bundle_with_an_external_block(tmp_path):
    from model.core.bundle import load_bundle
    from model.core.ensemble import Ensemble
    from model.core.explain import Explainer
    from training.evaluate import evaluate_run
    from training.export import export_bundle
    from training.heads import split_heads
    from training.train import train

    data = make_kermany_folder(tmp_path / "data", n_per_class=10)
    run = train(str(data), str(tmp_path / "run"), task="multitask", members=("cnn", "resnet"), size=32, epochs=1,
                steps=2, batch_size=8, cache_dir=None, eager=True)
    members = json.loads((run / "members.json").read_text())
    assert [m["name"] for m in members] == ["cnn", "resnet"] and members[0]["recipe"]["ema"] == 0.99
    runs = split_heads(run)
    assert set(runs) == {"binary", "multiclass"}
    external = data / "chest_xray" / "test"  # plain {NORMAL,PNEUMONIA}/ folders, read as one external split
    for task, classes in (("binary", ["NORMAL", "PNEUMONIA"]), ("multiclass", ["NORMAL", "BACTERIAL", "VIRAL"])):
        evaluate_run(runs[task], external=external)
        evaluation = json.loads((runs[task] / "evaluation.json").read_text())
        assert evaluation["external"]["n"] == 4 and "scored once" in evaluation["external"]["note"]
        scores = json.loads((runs[task] / "scores-external.json").read_text())
        assert scores["split"] == "external" and len(scores["y"]) == 4
        bundle = load_bundle(export_bundle(runs[task], tmp_path / "bundles" / task))
        assert bundle.classes == classes and (bundle.path / "reports" / "scores-external.json").exists()
        if task == "binary":
            assert set(bundle.manifest["evaluation"]["external"]) >= {"auc", "auc_ci95", "ece", "accuracy"}
            for point in evaluation["external"]["operating_points"].values():
                assert {"sensitivity", "specificity", "threshold"} <= set(point)
        else:
            assert "bacterial_vs_viral_auc" in evaluation["external"]
        prediction = Ensemble(bundle).predict(toy_chest((64, 64), seed=5))
        assert set(prediction.probabilities) == set(classes)
        cams = Explainer(bundle).cams(toy_chest((64, 64), seed=5))
        assert set(cams) == {"cnn", "resnet", "ensemble"} and cams["ensemble"].shape == (32, 32)


def test_frame_share_measures_the_cam_mass_on_the_outer_tenth():
    from training.cam_audit import frame_mask, frame_share

    mask = frame_mask(100, 100)
    assert mask.mean() == pytest.approx(0.36)
    centre = np.zeros((100, 100), np.float32)
    centre[40:60, 40:60] = 1
    assert frame_share(centre, mask) == (0.0, False)
    corner = np.zeros((100, 100), np.float32)
    corner[:5, :5] = 1
    corner[50, 50] = 0.5
    share, peak = frame_share(corner, mask)
    assert share == pytest.approx(25 / 25.5) and peak
