"""model/outputs/bundle_tables.py: the tables and series the Dataset, Evaluation and Model card pages draw, shaped
from a bundle's reports exactly as training.evaluate / training.export write them; with model/outputs/formatting.py
(how their numbers are shown) and model/outputs/data_folder.py (where the dataset's images are)."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from model.core import metrics as M
from model.outputs import bundle_tables as tables
from model.outputs import data_folder
from model.outputs import formatting as F


@pytest.fixture(scope="module")
def binary_reports():
    """(evaluation, scores, manifest) in the export's exact format, from a small synthetic scorer."""
    from training.evaluate import binary_report

    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random(n) < 0.6).astype(int)
    subtype = np.where(y == 1, rng.choice(["bacteria", "virus"], n), "normal")
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, n), 0, 1)
    thresholds = {"balanced": 0.5, "screening": 0.3, "confirmatory": 0.7}
    ensemble = binary_report(y, p, thresholds, subtype)
    evaluation = {"task": "binary", "n": n, "ensemble": ensemble,
                  "members": {"cnn": binary_report(y, np.clip(p + 0.05, 0, 1), thresholds, subtype)}}
    scores = {"task": "binary", "path": [f"images/{i}.png" for i in range(n)], "subtype": subtype.tolist(),
              "y": y[:, None].tolist(), "ensemble": p[:, None].round(5).tolist()}
    manifest = {"members": [{"name": "cnn", "val_auc": 0.9, "temperature": 1.3, "params": 1000, "arch": "compact_cnn",
                             "code_commit": "0123456789abcdef-dirty", "sha256": "f" * 64, "epochs_run": 4,
                             "train_seconds": 75}],
                "operating_points": [{"name": k, "rule": "youden", "threshold": v, "chosen_on": "val",
                                      "val_sensitivity": 0.8, "val_specificity": 0.7} for k, v in thresholds.items()],
                "training": {"counts": {"train": 3665, "val": 782, "test": 785},
                             "patients": {"train": 2016, "val": 418, "test": 427}}}
    return evaluation, scores, manifest


EDA = {
    "dataset": "kermany", "n_images": 10, "n_patients": 6, "label_column": "label",
    "counts": [{"split": "test", "label": "NORMAL", "subtype": "normal", "images": 1},
               {"split": "train", "label": "PNEUMONIA", "subtype": "virus", "images": 2},
               {"split": "train", "label": "NORMAL", "subtype": "normal", "images": 3},
               {"split": "train", "label": "PNEUMONIA", "subtype": "bacteria", "images": 3},
               {"split": "val", "label": "PNEUMONIA", "subtype": "bacteria", "images": 1}],
    "patients_per_split": {"test": 1, "train": 4, "val": 1},
    "balance_before_dedup": {"PNEUMONIA": 6, "NORMAL": 4}, "balance_after_dedup": {"PNEUMONIA": 5, "NORMAL": 4},
    "size": {"width": [224, 224, 384, 384, None], "height": [224, 224, 300, 256, None],
             "label": ["NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL", "NORMAL"]},
    "source_kind": {"squashed_224": 2, "original": 2},
    "intensity_histogram": {"NORMAL": {"edges": [0, 128, 256], "density": [0.25, 0.75]}},
    "mean_image": {"NORMAL": [[0, 255], [128, 64]]},
}


def test_numbers_are_formatted_one_way_and_missing_ones_show_a_dash():
    assert F.fmt_num(0.91234) == "0.912"
    assert F.fmt_pct(0.9123) == "91.2%"
    assert F.fmt_ci([0.53, 0.61]) == "0.530–0.610"
    assert F.fmt_int(3665) == "3,665" and F.fmt_int(3665, "es") == "3\u202f665"
    assert F.fmt_duration(192.6) == "3 min 13 s"
    assert F.fmt_datetime("2026-11-23T11:07:49Z") == "2026-11-23 11:07 UTC"
    for missing in (None, float("nan"), "x"):
        assert F.fmt_num(missing) == F.fmt_pct(missing) == F.fmt_int(missing) == "—"
    assert F.fmt_ci([0.1, float("nan")]) == F.fmt_ci(None) == "—"


def test_split_counts_are_ordered_train_val_test_and_totalled():
    frame = tables.counts_frame(EDA)
    assert list(dict.fromkeys(frame["split"])) == ["train", "val", "test"]
    pivot = tables.counts_pivot(EDA)
    assert list(pivot.columns) == ["label", "subtype", "train", "val", "test", "total"]
    total = pivot[pivot["label"] == "all"].iloc[0]
    assert (total["train"], total["val"], total["test"], total["total"]) == (8, 1, 1, 10)
    bacteria = pivot[pivot["subtype"] == "bacteria"].iloc[0]
    assert (bacteria["train"], bacteria["val"], bacteria["total"]) == (3, 1, 4)


def test_patients_per_split_and_images_per_patient():
    frame = tables.patients_frame(EDA).set_index("split")
    assert frame.loc["train", "images"] == 8 and frame.loc["train", "patients"] == 4
    assert frame.loc["train", "images_per_patient"] == 2.0


def test_class_balance_before_and_after_deduplication_shares_sum_to_one():
    frame = tables.balance_frame(EDA)
    assert set(frame["stage"]) == {"before", "after"}
    assert frame.groupby("stage")["share"].sum().round(9).eq(1).all()
    after = frame[(frame["stage"] == "after") & (frame["label"] == "PNEUMONIA")].iloc[0]
    assert after["images"] == 5 and math.isclose(after["share"], 5 / 9)


def test_image_sizes_drop_unknown_sizes_and_compute_aspect():
    sizes = tables.sizes_frame(EDA)
    assert len(sizes) == 4
    assert math.isclose(sizes["aspect"].iloc[2], 384 / 300)
    assert tables.size_counts(EDA).iloc[0].to_dict() == {"size": "224×224", "images": 2}


def test_source_summary_counts_originals_and_squashed_copies():
    assert tables.source_summary(EDA) == {"total": 4, "original": 2, "low_resolution": 2, "original_long_side": 384,
                                     "low_resolution_side": 224}
    assert tables.source_summary({**EDA, "source_kind": None}) is None


def test_intensity_histogram_and_mean_image():
    hist = tables.histogram_frame(EDA)
    assert hist["intensity"].tolist() == [64.0, 192.0] and hist["density"].tolist() == [0.25, 0.75]
    assert tables.mean_images(EDA)["NORMAL"].shape == (2, 2)


def test_counts_at_a_threshold_are_model_metrics_on_the_stored_scores(binary_reports):
    _, scores, _ = binary_reports
    y, p = tables.binary_scores(scores)
    assert y.shape == p.shape == (120,)
    point = tables.at_threshold(y, p, 0.42)
    assert {k: point[k] for k in ("tp", "fp", "tn", "fn")} == M.confusion(y, p, 0.42)
    assert point["sensitivity"] == M.rates(M.confusion(y, p, 0.42))["sensitivity"]


def test_threshold_sweep_agrees_with_rates_at_every_threshold(binary_reports):
    _, scores, _ = binary_reports
    y, p = tables.binary_scores(scores)
    sweep = tables.threshold_sweep(y, p)
    assert sweep["threshold"].is_monotonic_increasing and sweep["threshold"].iloc[0] == 0
    for row in sweep.iloc[::37].itertuples():
        expected = M.rates(M.confusion(y, p, row.threshold))
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            got, want = getattr(row, key), expected[key]
            assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want)


def test_subtype_sensitivity_at_a_threshold(binary_reports):
    _, scores, _ = binary_reports
    y, p = tables.binary_scores(scores)
    subtype = np.asarray(scores["subtype"])
    got = tables.subtype_sensitivity(scores, 0.5)
    assert set(got) == {"bacteria", "virus"}
    m = (subtype == "virus") & (y == 1)
    assert math.isclose(got["virus"], (p[m] >= 0.5).mean())
    assert tables.subtype_sensitivity({**scores, "subtype": None}, 0.5) == {}


def test_errors_are_the_most_confident_mistakes(binary_reports):
    _, scores, _ = binary_reports
    y, p = tables.binary_scores(scores)
    found = tables.errors(scores, 0.5, limit=4)
    fp = sorted(p[(p >= 0.5) & (y == 0)], reverse=True)[:4]
    fn = sorted(p[(p < 0.5) & (y == 1)])[:4]
    assert [e["probability"] for e in found["fp"]] == pytest.approx(fp)
    assert [e["probability"] for e in found["fn"]] == pytest.approx(fn)
    for e in found["fp"]:
        i = scores["path"].index(e["path"])
        assert y[i] == 0 and e["subtype"] == "normal"


def test_member_table_lists_the_ensemble_first_with_manifest_extras(binary_reports):
    evaluation, _, manifest = binary_reports
    table = tables.member_table(evaluation, manifest)
    assert table["model"].tolist() == ["ensemble", "cnn"]
    assert table.loc[0, "auc"] == evaluation["ensemble"]["auc"]
    assert [table.loc[0, "ci_low"], table.loc[0, "ci_high"]] == evaluation["ensemble"]["auc_ci95"]
    assert table.loc[1, "val_auc"] == 0.9 and math.isnan(table.loc[0, "val_auc"])


def test_curves_have_one_series_per_scorer(binary_reports):
    evaluation, _, _ = binary_reports
    roc = tables.curve_frame(evaluation, "roc")
    assert set(roc["model"]) == {"ensemble", "cnn"}
    assert roc[roc["model"] == "ensemble"]["x"].tolist() == evaluation["ensemble"]["roc"]["fpr"]
    pr = tables.curve_frame(evaluation, "pr")
    assert pr[pr["model"] == "cnn"]["y"].tolist() == evaluation["members"]["cnn"]["pr"]["precision"]


def test_operating_point_table_joins_the_validation_choice_and_the_test_numbers(binary_reports):
    evaluation, _, manifest = binary_reports
    table = tables.operating_point_table(manifest, evaluation).set_index("name")
    test = evaluation["ensemble"]["operating_points"]["screening"]
    row = table.loc["screening"]
    assert row["threshold"] == 0.3 and row["val_sensitivity"] == 0.8
    assert row["test_sensitivity"] == test["sensitivity"] and row["test_tp"] == test["tp"]
    subtypes = tables.subtype_table(evaluation)
    assert len(subtypes) == 6 and set(subtypes["subtype"]) == {"bacteria", "virus"}


def test_reliability_bins_before_and_after():
    cal = {"bins_before": [{"lo": 0.5, "hi": 0.6, "n": 3, "mean_predicted": 0.55, "observed": 0.7}],
           "bins_after": [{"lo": 0.6, "hi": 0.7, "n": 3, "mean_predicted": 0.69, "observed": 0.7},
                          {"lo": 0.9, "hi": 1.0, "n": 1, "mean_predicted": 0.95, "observed": 1.0}]}
    frame = tables.reliability_frame(cal)
    assert frame["stage"].tolist() == ["before", "after", "after"]
    assert frame["n"].tolist() == [3, 3, 1]


def test_per_class_tables_from_the_multiclass_report():
    from training.evaluate import per_class_report

    rng = np.random.default_rng(1)
    classes = ["NORMAL", "BACTERIAL", "VIRAL"]
    y = np.eye(3)[rng.integers(0, 3, 90)]
    ens = {s: np.clip(y * 0.5 + rng.random((90, 3)) * 0.5, 0, 1) for s in ("val", "test")}
    ens = {s: v / v.sum(1, keepdims=True) for s, v in ens.items()}
    evaluation = per_class_report("multiclass", classes, y, y, ens, {"cnn": ens})
    table = tables.per_class_table(evaluation)
    assert table["class"].tolist() == classes
    assert table["auc"].tolist() == [evaluation["per_class"][c]["auc"] for c in classes]
    assert table["support"].sum() == 90
    members = tables.member_per_class_table(evaluation)
    assert members["model"].tolist() == ["ensemble", "cnn"] and list(members.columns[1:]) == classes
    curves = tables.per_class_curves(evaluation)
    assert set(curves["class"]) == set(classes)


def test_training_histories_and_the_overfitting_gap(tmp_path):
    pd.DataFrame({"epoch": [0, 1, 2], "auc": [0.8, 0.9, 0.99], "val_auc": [0.75, 0.85, 0.8],
                  "loss": [0.5, 0.3, 0.1], "val_loss": [0.6, 0.4, 0.5]}).to_csv(tmp_path / "history-cnn.csv",
                                                                            index=False)
    pd.DataFrame({"epoch": [0], "auc": [0.7], "val_auc": [0.6]}).to_csv(tmp_path / "history-mobilenetv2.csv",
                                                                        index=False)
    history = tables.read_histories(tmp_path)
    assert history["member"].tolist() == ["cnn"] * 3 + ["mobilenetv2"]
    assert history["epoch"].tolist() == [1, 2, 3, 1]
    gap = tables.overfitting_gap(history).set_index("member")
    assert gap.loc["cnn", "best_epoch"] == 2 and gap.loc["cnn", "epochs"] == 3
    assert math.isclose(gap.loc["cnn", "gap"], 0.9 - 0.85)
    assert tables.read_histories(tmp_path / "none").empty


def test_small_training_sets_are_flagged(binary_reports):
    _, _, manifest = binary_reports
    assert not tables.is_small_training_set(manifest)
    assert tables.is_small_training_set({"training": {"counts": {"train": 999}}})
    assert tables.is_small_training_set({})


def test_model_card_tables_from_the_manifest(binary_reports):
    _, _, manifest = binary_reports
    assert tables.split_table(manifest).to_dict("list") == {"split": ["train", "val", "test"],
                                                       "images": [3665, 782, 785], "patients": [2016, 418, 427]}
    versions = tables.version_table(manifest)
    assert versions.loc[0, "code_commit"] == "01234567-dirty" and versions.loc[0, "sha256"] == "f" * 12
    assert tables.dataset_key({"training": {"data": "kermany"}}) == "kermany"
    assert tables.dataset_key({"training": {"data": "nih14"}}) == "nih14"
    assert tables.dataset_key({"training": {"data": "data"}}) == "other"
    assert "Keras 3.15.1" in tables.hardware_text({"backend": "tensorflow", "keras": "3.15.1", "devices": ["cpu:0"]})


def test_the_data_folder_comes_from_the_environment_first(monkeypatch, tmp_path):
    monkeypatch.setenv("TORAX_DATA_DIR", str(tmp_path))
    assert data_folder.default_data_dir() == str(tmp_path)
    assert data_folder.data_dir_ok(data_folder.default_data_dir())
    assert not data_folder.data_dir_ok("") and not data_folder.data_dir_ok(str(tmp_path / "missing"))


def test_sample_images_from_a_folder_layout_and_from_a_manifest(tmp_path):
    from helpers.bundles import make_kermany_folder

    root = make_kermany_folder(tmp_path, n_per_class=4, size=(32, 32))
    found = data_folder.sample_paths(str(root), ["NORMAL", "PNEUMONIA"], per_class=3, seed=0)
    assert [len(v) for v in found.values()] == [3, 3]
    assert all(p.parent.name == cls and p.is_file() for cls, paths in found.items() for p in paths)
    assert found == data_folder.sample_paths(str(root), ["NORMAL", "PNEUMONIA"], per_class=3, seed=0)

    files = sorted((root / "chest_xray").rglob("*.jpeg"))
    pd.DataFrame({"path": [str(p.relative_to(root)) for p in files],
                  "label": [p.parent.name for p in files]}).to_csv(root / "manifest.csv", index=False)
    found = data_folder.sample_paths(str(root), ["PNEUMONIA", "VIRAL"], per_class=2, seed=3)
    assert len(found["PNEUMONIA"]) == 2 and found["VIRAL"] == []
    assert all(p.is_file() and p.parent.name == "PNEUMONIA" for p in found["PNEUMONIA"])


@pytest.mark.parametrize("module", ["bundle_tables", "formatting", "data_folder"])
def test_reports_module_never_imports_streamlit(module):
    source = (data_folder.REPO_ROOT / "model" / "outputs" / f"{module}.py").read_text()
    assert "import streamlit" not in source and "training" not in json.dumps(
        [line for line in source.splitlines() if line.startswith(("import", "from"))])


def test_initial_weights_are_told_from_the_manifests_record():
    assert tables.initial_weights_parts(None) is None
    assert tables.initial_weights_parts({"kind": "random", "seed": 7}) == {"kind": "random", "seed": 7}
    pretrained = tables.initial_weights_parts({
        "kind": "pretrained backbone", "name": "mobilenet_v2_nsfwjs", "weights": "ImageNet", "registry": "npm",
        "package": "nsfwjs", "version": "4.3.0", "licence": "MIT", "sha256": "a" * 64})
    assert pretrained == {"kind": "pretrained", "weights": "ImageNet", "package": "npm nsfwjs@4.3.0",
                          "licence": "MIT", "sha256": "a" * 12}
    assert tables.initial_weights_parts({"kind": "file", "file": "/runs/x/members/cnn.keras"})["file"] == "cnn.keras"
