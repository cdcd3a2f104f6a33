"""The training pipeline on synthetic data: reading both layouts, patient-level splitting, de-duplication,
operating points, and the whole path data → train → evaluate → export → load → predict."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from model.core import metrics as M
from model.core.ensemble import apply_temperature
from training import data as data_lib

from helpers.bundles import make_kermany_folder
from helpers.cli import run_cli
from helpers.images import radiograph, toy_chest


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_kermany_folder(tmp_path_factory.mktemp("data"), n_per_class=20)


def test_public_layout_gives_labels_subtypes_and_patients(folder):
    df = data_lib.read_dataset(folder)
    assert set(df["label"]) == {"NORMAL", "PNEUMONIA"}
    assert set(df.loc[df["label"] == "PNEUMONIA", "subtype"]) == {"bacteria", "virus"}
    assert set(df.loc[df["label"] == "NORMAL", "subtype"]) == {"normal"}
    # the official test folder reuses personN numbers for other children: its ids get their own namespace
    assert df.loc[df["source_split"] == "test", "patient_id"].str.startswith("test:").all()
    assert not df.loc[df["source_split"] != "test", "patient_id"].str.startswith("test:").any()


def test_manifest_layout(tmp_path):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), toy_chest((64, 64)))
    pd.DataFrame([{"path": "images/a.png", "split": "train", "label": "NORMAL", "subtype": "normal",
                   "patient_id": "IM-0001"}]).to_csv(tmp_path / "manifest.csv", index=False)
    df = data_lib.read_dataset(tmp_path)
    assert df.loc[0, "path"] == str(tmp_path / "images" / "a.png") and df.loc[0, "source_split"] == "train"


@pytest.mark.parametrize("name,label,expected", [
    ("person1372_bacteria_3501.jpeg", "PNEUMONIA", ("person1372", "bacteria")),
    ("person22_virus_55.jpeg", "PNEUMONIA", ("person22", "virus")),
    ("IM-0115-0001.jpeg", "NORMAL", ("IM-0115", "normal")),
    ("NORMAL2-IM-0587-0001-0002.jpeg", "NORMAL", ("NORMAL2-IM-0587", "normal")),
])
def test_kermany_names(name, label, expected):
    assert data_lib.parse_kermany_name(name, label) == expected


def test_split_keeps_every_patient_and_duplicate_in_one_split(folder):
    df = data_lib.read_dataset(folder)
    images = data_lib.load_images(df, {"height": 32, "width": 32, "channels": 1, "resize": "squash"})
    df["dup"] = data_lib.duplicate_groups(images)
    assert df["dup"].duplicated().sum() >= 1, "the planted byte-identical copy must be found"
    df["split"] = data_lib.split_by_patient(df, seed=3, dup_groups=df["dup"].to_numpy())
    assert set(df["split"]) == {"train", "val", "test"}
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    assert (df.groupby("dup")["split"].nunique() == 1).all()
    again = data_lib.split_by_patient(df, seed=3, dup_groups=df["dup"].to_numpy())
    assert (again == df["split"].to_numpy()).all(), "the split is a function of the seed"


def test_near_duplicates_are_grouped():
    a = toy_chest((128, 128), seed=1)
    near = np.clip(a.astype(int) + 2, 0, 255).astype(np.uint8)  # re-encoded / slightly brighter copy
    other = toy_chest((128, 128), seed=2)
    groups = data_lib.duplicate_groups(np.stack([a, near, other])[..., None])
    assert groups[0] == groups[1] != groups[2]


def test_one_image_per_patient_keeps_one_per_subtype():
    df = pd.DataFrame({"patient_id": ["p1", "p1", "p1", "p2"], "subtype": ["bacteria", "bacteria", "virus", "normal"],
                       "path": list("abcd")})
    kept = data_lib.one_image_per_patient(df)
    assert sorted(zip(kept["patient_id"], kept["subtype"])) == [("p1", "bacteria"), ("p1", "virus"), ("p2", "normal")]


def test_operating_points_meet_their_definitions_on_val():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    score = np.clip(y * 0.3 + rng.normal(0.35, 0.2, 500), 0, 1)
    screening = M.threshold_for(y, score, "sensitivity", 0.95)
    confirmatory = M.threshold_for(y, score, "specificity", 0.95)
    balanced = M.threshold_for(y, score, "youden")
    assert M.rates(M.confusion(y, score, screening))["sensitivity"] >= 0.95
    assert M.rates(M.confusion(y, score, confirmatory))["specificity"] >= 0.95
    j = lambda t: sum(M.rates(M.confusion(y, score, t))[k] for k in ("sensitivity", "specificity"))
    assert all(j(balanced) >= j(t) - 1e-9 for t in np.linspace(0, 1, 101))
    # screening is the loosest threshold that still reaches the target: one step stricter would miss it
    stricter = np.sort(score[score > screening])[0] + 1e-9
    assert M.rates(M.confusion(y, score, stricter))["sensitivity"] < 0.95


def test_multiclass_calibration_undoes_a_prior_shift_with_a_bias_per_class():
    """Class-balanced training pushes a three-class model towards its rarer classes; a temperature cannot move
    probability between classes, a bias per class (vector scaling) can, and it is what the val likelihood asks for."""
    from training.evaluate import fit_calibration

    rng = np.random.default_rng(0)
    truth = rng.dirichlet([1.0, 1.0, 1.0], 4000) * np.array([0.2, 0.6, 0.2])
    truth /= truth.sum(1, keepdims=True)
    y = np.eye(3)[[rng.choice(3, p=p) for p in truth]]
    shift = np.array([0.0, -0.9, 0.4])  # the model under-calls class 1 and over-calls class 2
    model = np.exp(np.log(truth) + shift)
    model /= model.sum(1, keepdims=True)
    temperature, bias = fit_calibration(model, y, "multiclass")
    assert temperature == pytest.approx(1.0, abs=0.1) and bias[0] == 0.0
    assert np.array(bias[1:]) == pytest.approx(-shift[1:], abs=0.15)
    calibrated = apply_temperature(model, temperature, "multiclass", bias)

    def nll(p):
        return -np.mean(np.log((p * y).sum(1)))
    assert nll(calibrated) < nll(model) - 0.01
    assert (calibrated.argmax(1) == y.argmax(1)).mean() > (model.argmax(1) == y.argmax(1)).mean()


def test_binary_calibration_finds_the_plain_likelihood_optimum_and_stays_finite_on_a_separated_sample():
    """The bundle's fit (`fit_calibration`) and a site's (`fit_platt`) are one Newton fit; the bundle's uses the
    plain labels, so on val it lands on the likelihood optimum, and where val separates the classes perfectly (no
    finite optimum) the slope stops at a temperature of 0.05 instead of running off."""
    from training.evaluate import fit_calibration

    rng = np.random.default_rng(0)
    logit = rng.normal(0, 2, 3000)
    y = (rng.random(3000) < M.sigmoid(1.6 * logit - 0.7)).astype(float)[:, None]
    prob = M.sigmoid(logit)[:, None]
    temperature, bias = fit_calibration(prob, y, "binary")
    assert 1 / temperature == pytest.approx(1.6, abs=0.15) and bias == pytest.approx(-0.7, abs=0.15)

    def nll(t, b):
        q = apply_temperature(prob, t, "binary", b)
        return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    best = nll(temperature, bias)
    assert all(best <= nll(temperature * f, bias + d) + 1e-12 for f in (0.98, 1.02) for d in (-0.02, 0.02))
    assert (1 / temperature, bias) != pytest.approx(M.fit_platt(y, logit))  # a site's smoothed targets differ
    separated = np.r_[np.full(50, 0.2), np.full(50, 0.8)][:, None]
    temperature, bias = fit_calibration(separated, np.r_[np.zeros(50), np.ones(50)][:, None], "binary")
    assert temperature == pytest.approx(1 / M.MAX_PLAIN_SLOPE) and np.isfinite(bias)


def test_auc_matches_the_rank_definition():
    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 300), rng.normal(size=300)
    pos, neg = s[y == 1], s[y == 0]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert M.roc_auc(y, s) == pytest.approx(expected)


def test_whole_pipeline_produces_a_bundle_the_cli_serves(tiny_bundles, tmp_path):
    bundle = tiny_bundles / "pneumonia-kermany"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "binary" and len(manifest["members"]) == 2
    assert {p["name"] for p in manifest["operating_points"]} == {"balanced", "screening", "confirmatory"}
    assert manifest["training"]["split_seed"] == 42 and manifest["training"]["code_commit"]
    evaluation = json.loads((bundle / "reports" / "evaluation.json").read_text())
    assert evaluation["split"] == "internal-test" and 0 <= evaluation["ensemble"]["auc"] <= 1
    eda = json.loads((bundle / "reports" / "eda.json").read_text())
    assert eda["n_images"] == sum(manifest["training"]["counts"].values())

    images = []
    for i, pneumonia in enumerate((False, True)):
        images.append(tmp_path / f"img{i}.png")
        cv2.imwrite(str(images[-1]), radiograph((200, 180), pneumonia, seed=100 + i))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    proc = run_cli(["predict", "--json", "--no-record", images[0], bad, images[1]], tiny_bundles)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in lines] == [str(images[0]), str(bad), str(images[1])]
    assert {json.dumps(r["record"]) for r in lines} == {'{"id": null, "state": "off"}'}  # kept out of the record
    assert proc.returncode == 1, "a file that could not be read makes the exit code 1"
    assert lines[1]["error"]["code"] == "unreadable_image" and lines[1]["probability"] is None
    for r in (lines[0], lines[2]):
        assert r["error"] is None and 0 <= r["probability"] <= 1
        not_a_radiograph = any(w["code"] == "not_chest_xray" for w in r["warnings"])  # a phantom: not assessed
        assert r["label"] in ((None,) if not_a_radiograph else ("NORMAL", "PNEUMONIA"))
        assert set(r["members"]) == {"cnn", "mobilenetv2"}
        assert r["probability"] == pytest.approx(np.mean(list(r["members"].values())))


def _nih_like_folder(root):
    """A labels.csv folder in the NIH ChestX-ray14 style: pipe-separated findings, patient ids."""
    (root / "images").mkdir(parents=True)
    rows, findings = [], ["No Finding", "Effusion", "Effusion|Mass", "Mass", "No Finding", "Cardiomegaly"]
    for i in range(48):
        cv2.imwrite(str(root / "images" / f"{i:08d}_000.png"), toy_chest((64, 64), i % 2 == 1, seed=i))
        rows.append({"path": f"images/{i:08d}_000.png", "finding_labels": findings[i % len(findings)],
                     "patient_id": f"{i:08d}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_multiclass_and_multilabel_bundles_train_and_serve(task, folder, tmp_path):
    from model.core.bundle import load_bundle
    from model.core.ensemble import Ensemble
    from training.evaluate import evaluate_run
    from training.export import export_bundle
    from training.train import train

    data = folder if task == "multiclass" else _nih_like_folder(tmp_path / "nih")
    # multiclass traces the training graph as real runs do; multilabel runs its one step eagerly (cheaper)
    run = train(str(data), str(tmp_path / "run"), task=task, members=("cnn",), size=32, epochs=1, steps=1,
                batch_size=8, cache_dir=None, eager=task == "multilabel")
    evaluation = evaluate_run(run)
    bundle = load_bundle(export_bundle(run, tmp_path / "bundles" / task))
    expected = ["NORMAL", "BACTERIAL", "VIRAL"] if task == "multiclass" else ["Cardiomegaly", "Effusion", "Mass"]
    assert bundle.classes == expected and set(evaluation["per_class_auc"]) == set(expected)
    prediction = Ensemble(bundle).predict(toy_chest((80, 80), seed=1))
    assert set(prediction.probabilities) == set(expected)
    if task == "multiclass":
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label() in expected
        assert bundle.manifest["calibration"]["method"].startswith("vector scaling")
        assert all(len(m.bias) == 3 and m.bias[0] == 0.0 for m in bundle.members)  # a bias per class
        # Exported again (e.g. re-calibrated): unchanged members keep their bytes, a changed one is written anew.
        first = {m["name"]: m["sha256"] for m in bundle.manifest["members"]}
        written = (bundle.path / "members" / "cnn.keras").stat().st_mtime_ns
        again = json.loads((export_bundle(run, tmp_path / "bundles" / task) / "manifest.json").read_text())
        assert {m["name"]: m["sha256"] for m in again["members"]} == first and again["version"] == bundle.version
        assert (bundle.path / "members" / "cnn.keras").stat().st_mtime_ns == written  # the file kept, not saved anew
        import keras
        member = keras.saving.load_model(run / "members" / "cnn.keras", compile=False)
        member.weights[0].assign(member.weights[0].numpy() + 1.0)
        member.save(run / "members" / "cnn.keras")
        changed = json.loads((export_bundle(run, tmp_path / "bundles" / task) / "manifest.json").read_text())
        assert {m["name"]: m["sha256"] for m in changed["members"]}["cnn"] != first["cnn"]
        assert changed["version"] != bundle.version
        evaluation = json.loads((run / "evaluation.json").read_text())
        evaluation["temperatures"]["cnn"] *= 1.5  # re-calibrated: the same member, other outputs
        (run / "evaluation.json").write_text(json.dumps(evaluation))
        recalibrated = json.loads((export_bundle(run, tmp_path / "bundles" / task) / "manifest.json").read_text())
        assert recalibrated["version"] not in (bundle.version, changed["version"])
    else:
        thresholds = bundle.operating_point("per-class")["thresholds"]
        assert set(prediction.label(thresholds)) <= set(expected)


def test_two_seeds_of_one_architecture_train_side_by_side_on_the_runs_split(folder, tmp_path):
    import keras

    from training.train import member_spec, train

    run = train(str(folder), str(tmp_path / "run"), members=("cnn@3", "cnn"), size=32, epochs=1, steps=1,
                batch_size=8, cache_dir=None, eager=True)
    members = {m["name"]: m for m in json.loads((run / "members.json").read_text())}
    assert set(members) == {"cnn", "cnn_s3"}
    assert (members["cnn"]["seed"], members["cnn_s3"]["seed"]) == (42, 3)
    assert members["cnn_s3"]["initial_weights"] == {"kind": "random", "seed": 3}
    assert (run / "history-cnn_s3.csv").exists()
    first = {n: keras.saving.load_model(run / members[n]["file"], compile=False) for n in members}
    assert not np.allclose(first["cnn"].weights[0].numpy(), first["cnn_s3"].weights[0].numpy())  # not a copy
    split = pd.read_csv(run / "split.csv")
    # the other order: each member's seed alone decides its start, augmentation and dropout, so a member trains
    # the same whichever members trained before it in the process
    swapped = train(str(folder), str(tmp_path / "swapped"), members=("cnn", "cnn@3"), size=32, epochs=1, steps=1,
                    batch_size=8, cache_dir=None, eager=True)
    assert pd.read_csv(swapped / "split.csv")["split"].tolist() == split["split"].tolist()  # @SEED keeps the split
    for name, model in first.items():
        again = keras.saving.load_model(swapped / "members" / f"{name}.keras", compile=False)
        for a, b in zip(again.weights, model.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="whole number"):
        member_spec("cnn@x", 42)
    with pytest.raises(ValueError, match="unknown architecture"):
        member_spec("vgg", 42)


def test_a_resumed_member_ends_where_an_uninterrupted_one_does(folder, tmp_path, monkeypatch):
    """Interrupted after its first epoch and run again, a member resumes from the epoch backup (weights, optimizer
    state and the weight average) and sees the batches an uninterrupted run saw, so it ends with the same weights."""
    import keras

    import training.train as T

    kwargs = dict(members=("cnn",), size=32, epochs=2, steps=None, batch_size=8, cache_dir=None, eager=True)
    whole = T.train(str(folder), str(tmp_path / "whole"), **kwargs)

    class PowerCut(T.TimeBudget):
        def on_epoch_end(self, epoch, logs=None):  # after the backup callback has written epoch 0
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(T, "TimeBudget", PowerCut)
        with pytest.raises(KeyboardInterrupt):
            T.train(str(folder), str(tmp_path / "cut"), **kwargs)
    assert not (tmp_path / "cut" / "members").exists() and (tmp_path / "cut" / "backup-cnn").exists()
    resumed = T.train(str(folder), str(tmp_path / "cut"), **kwargs)
    history = pd.read_csv(resumed / "history-cnn.csv")
    assert history["epoch"].tolist() == [0, 1]  # epoch 0 from the first process, epoch 1 from the second
    a, b = (keras.saving.load_model(r / "members" / "cnn.keras", compile=False) for r in (whole, resumed))
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-6, err_msg=x.path)
