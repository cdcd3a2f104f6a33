"""The Dataset, Evaluation and Model card pages, run through app.py's navigation with Streamlit's AppTest against a
real (tiny) bundle: what they show must be the bundle's own report and manifest numbers."""
import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from model.core import metrics as M
from model.outputs import bundle_tables as tables
from model.outputs import formatting as F

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = "pneumonia-kermany"
STRINGS = {page: json.loads((ROOT / "assets" / "strings" / f"{page}.json").read_text(encoding="utf-8"))
           for page in ("dataset", "evaluation", "model_card", "evidence")}


@pytest.fixture
def bundle_dir(tiny_bundles, point_app_at) -> Path:
    return point_app_at(tiny_bundles) / BUNDLE


def read(bundle_dir: Path, name: str) -> dict:
    path = bundle_dir / ("manifest.json" if name == "manifest" else f"reports/{name}.json")
    return json.loads(path.read_text())


def open_page(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(f"pages/{page.replace('_', '-')}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figure(at: AppTest, key: str) -> dict:
    for element in at.get("plotly_chart"):
        if element.proto.id.endswith("-" + key):
            return json.loads(element.proto.spec)
    raise AssertionError(f"no chart {key!r} on the page")


def values(data) -> np.ndarray:
    """A plotly array as numbers: plain JSON lists, or the typed base64 form plotly uses for numpy arrays."""
    if isinstance(data, dict) and "bdata" in data:
        array = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
        shape = data.get("shape")
        if isinstance(shape, str):
            shape = [int(n) for n in shape.split(",")]
        return array.reshape(shape) if shape else array
    return np.asarray(data)


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}; errors {[e.value for e in at.error]}"
    return found[0]


def images(at: AppTest) -> list:
    return [img for element in at.get("image") for img in element.proto.imgs]


def text_of(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def middle_threshold(bundle_dir: Path) -> float:
    """A threshold at the median test score, so every cell of the confusion matrix can be non-empty."""
    _, p = tables.binary_scores(read(bundle_dir, "scores"))
    return float(np.median(p))


# --- Evaluation -----------------------------------------------------------------------------------------------------

def test_evaluation_shows_the_reports_auc_with_its_confidence_interval(bundle_dir):
    evaluation = read(bundle_dir, "evaluation")
    ens = evaluation["ensemble"]
    at = open_page("evaluation")
    en = STRINGS["evaluation"]["en"]
    assert at.title[0].value == en["title"]
    assert metric(at, en["m_auc"]) == f"{ens['auc']:.3f}"
    assert metric(at, en["m_auc_ci"]) == f"{ens['auc_ci95'][0]:.3f}–{ens['auc_ci95'][1]:.3f}"
    assert metric(at, en["m_ap"]) == f"{ens['average_precision']:.3f}"
    assert metric(at, en["m_ece"]) == f"{ens['calibration']['ece_after']:.3f}"

    legend = {trace["name"] for trace in figure(at, "roc_chart")["data"]}
    for name, r in [("ensemble", ens)] + list(evaluation["members"].items()):
        assert f"{name} — AUC {r['auc']:.3f} ({r['auc_ci95'][0]:.3f}–{r['auc_ci95'][1]:.3f})" in legend
    roc = next(tr for tr in figure(at, "roc_chart")["data"] if tr["name"].startswith("ensemble"))
    assert values(roc["x"]).tolist() == ens["roc"]["fpr"] and values(roc["y"]).tolist() == ens["roc"]["tpr"]
    pr_legend = {trace["name"] for trace in figure(at, "pr_chart")["data"]}
    assert f"ensemble — AP {ens['average_precision']:.3f}" in pr_legend


def test_confusion_matrix_at_the_shared_threshold_is_model_metrics_on_the_stored_scores(bundle_dir):
    threshold = middle_threshold(bundle_dir)
    y, p = tables.binary_scores(read(bundle_dir, "scores"))
    counts = M.confusion(y, p, threshold)
    rates = M.rates(counts)
    at = open_page("evaluation", threshold=threshold, threshold_bundle=BUNDLE)
    en = STRINGS["evaluation"]["en"]

    z = values(figure(at, "confusion_chart")["data"][0]["z"]).tolist()
    assert z == [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]]
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        assert metric(at, en[key]) == F.fmt_pct(rates[key])
    assert at.slider(key="evaluation_threshold").value == pytest.approx(threshold)
    assert at.session_state["threshold"] == threshold


def test_moving_the_slider_changes_the_shared_threshold_and_the_counts(bundle_dir):
    at = open_page("evaluation")
    y, p = tables.binary_scores(read(bundle_dir, "scores"))
    at.slider(key="evaluation_threshold").set_value(0.0).run()
    assert at.session_state["threshold"] == 0.0
    counts = M.confusion(y, p, 0.0)
    z = values(figure(at, "confusion_chart")["data"][0]["z"]).tolist()
    assert z == [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]]
    assert counts["tn"] == counts["fn"] == 0


def test_operating_point_buttons_set_the_threshold_and_the_table_shows_val_and_test_numbers(bundle_dir):
    manifest, evaluation = read(bundle_dir, "manifest"), read(bundle_dir, "evaluation")
    at = open_page("evaluation", threshold=0.0, threshold_bundle=BUNDLE)
    point = manifest["operating_points"][-1]
    at.button(key=f"op_{point['name']}").click().run()
    assert at.session_state["threshold"] == point["threshold"]

    table = at.table[0].value
    column = STRINGS["evaluation"]["en"][f"op_{point['name']}"]
    test = evaluation["ensemble"]["operating_points"][point["name"]]
    en = STRINGS["evaluation"]["en"]
    assert table.loc[en["col_threshold"], column] == f"{point['threshold']:.3f}"
    assert table.loc[en["col_val_sens"], column] == F.fmt_pct(point["val_sensitivity"])
    assert table.loc[en["col_test_spec"], column] == F.fmt_pct(test["specificity"])
    assert table.loc[en["col_test_counts"], column] == f"{test['tp']} / {test['fp']} / {test['tn']} / {test['fn']}"


def test_threshold_sweep_reliability_and_subtype_charts_use_the_reports(bundle_dir):
    scores, evaluation = read(bundle_dir, "scores"), read(bundle_dir, "evaluation")
    threshold = middle_threshold(bundle_dir)
    at = open_page("evaluation", threshold=threshold, threshold_bundle=BUNDLE)
    y, p = tables.binary_scores(scores)

    sweep = {trace["name"]: trace for trace in figure(at, "sweep_chart")["data"]}
    sens = sweep[STRINGS["evaluation"]["en"]["sensitivity"]]
    i = len(values(sens["x"])) // 2
    x, ys = values(sens["x"]), values(sens["y"])
    assert ys[i] == pytest.approx(M.rates(M.confusion(y, p, x[i]))["sensitivity"])

    cal = evaluation["ensemble"]["calibration"]
    names = [trace.get("name", "") for trace in figure(at, "reliability_chart")["data"]]
    assert any(n.endswith(f"ECE {cal['ece_before']:.3f}") for n in names)
    assert any(n.endswith(f"ECE {cal['ece_after']:.3f}") for n in names)

    bars = figure(at, "subtype_chart")["data"]
    current = STRINGS["evaluation"]["en"]["your_threshold"].format(threshold=f"{threshold:.3f}")
    shown = {(b["name"], x): v for b in bars for x, v in zip(values(b["x"]).tolist(), values(b["y"]).tolist())}
    for subtype, value in tables.subtype_sensitivity(scores, threshold).items():
        label = STRINGS["evaluation"]["en"].get(f"subtype_{subtype}", subtype)
        assert shown[(label, current)] == pytest.approx(value)


def test_training_curves_come_from_the_history_files(bundle_dir):
    history = tables.read_histories(bundle_dir / "reports")
    at = open_page("evaluation")
    traces = figure(at, "training_val_auc_chart")["data"]
    for member, h in history.groupby("member"):
        val = next(tr for tr in traces if tr["name"] == f"{member} · {STRINGS['evaluation']['en']['validation']}")
        assert values(val["y"]) == pytest.approx(h["val_auc"].tolist())
    table = next(d.value for d in at.dataframe if STRINGS["evaluation"]["en"]["col_gap"] in d.value.columns)
    assert len(table) == history["member"].nunique()


def test_error_gallery_shows_the_mistakes_with_grad_cam_only_after_the_button(bundle_dir, tiny_bundles):
    threshold = middle_threshold(bundle_dir)
    scores = read(bundle_dir, "scores")
    expected = tables.errors(scores, threshold, 6)
    at = open_page("evaluation", threshold=threshold, threshold_bundle=BUNDLE,
                   data_dir=str(tiny_bundles.parent / "data"))
    assert images(at) == []  # nothing computed at page load
    at.button(key="show_errors").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = images(at)
    assert len(shown) == len(expected["fp"]) + len(expected["fn"]) > 0
    captions = [img.caption for img in shown]
    for item in expected["fp"] + expected["fn"]:
        assert any(f"p = {item['probability']:.3f}" in c and Path(item["path"]).name in c for c in captions)


def test_evaluation_without_the_data_folder_still_works(bundle_dir, tmp_path):
    at = open_page("evaluation", data_dir=str(tmp_path / "missing"))
    assert STRINGS["evaluation"]["en"]["data_dir_missing"] in [i.value for i in at.info]


def test_evaluation_in_spanish(bundle_dir):
    evaluation = read(bundle_dir, "evaluation")
    at = open_page("evaluation", lang="es")
    es = STRINGS["evaluation"]["es"]
    assert at.title[0].value == es["title"]
    assert metric(at, es["m_auc"]) == f"{evaluation['ensemble']['auc']:.3f}"
    assert es["threshold_caption"] in text_of(at)


# --- Dataset --------------------------------------------------------------------------------------------------------

def test_dataset_page_shows_the_eda_counts_and_images(bundle_dir, tiny_bundles):
    eda = read(bundle_dir, "eda")
    en = STRINGS["dataset"]["en"]
    at = open_page("dataset", data_dir=str(tiny_bundles.parent / "data"))
    assert at.title[0].value == en["title"]
    assert metric(at, en["m_images"]) == F.fmt_int(eda["n_images"])
    assert metric(at, en["m_patients"]) == F.fmt_int(eda["n_patients"])
    assert metric(at, en["m_duplicates"]) == F.fmt_int(eda["duplicates_removed_if_deduplicated"])

    table = at.dataframe[0].value
    total = table.iloc[-1]
    for split in ("train", "val", "test"):
        expected = sum(c["images"] for c in eda["counts"] if c["split"] == split)
        assert total[en[f"split_{split}"]] == expected
    bars = figure(at, "counts_chart")["data"]
    assert sum(values(b["y"]).sum() for b in bars) == eda["n_images"]

    for label, mean in eda["mean_image"].items():
        assert values(figure(at, f"mean_{label}")["data"][0]["z"]).tolist() == mean
    hist = {tr["name"]: tr for tr in figure(at, "intensity_chart")["data"]}
    for label, h in eda["intensity_histogram"].items():
        assert values(hist[label]["y"]) == pytest.approx(h["density"])
    shown = images(at)
    assert len(shown) == 12  # six examples per class from the local dataset folder


def test_dataset_page_without_the_data_folder_still_works(bundle_dir, tmp_path):
    at = open_page("dataset", data_dir=str(tmp_path / "missing"))
    assert STRINGS["dataset"]["en"]["data_dir_missing"] in [i.value for i in at.info]
    assert images(at) == []


def test_dataset_in_spanish(bundle_dir):
    at = open_page("dataset", lang="es")
    es = STRINGS["dataset"]["es"]
    assert at.title[0].value == es["title"]
    assert es["h_splits"] in [h.value for h in at.header]


# --- Model card -----------------------------------------------------------------------------------------------------

def test_model_card_shows_the_manifest_numbers(bundle_dir):
    manifest = read(bundle_dir, "manifest")
    summary, training = manifest["evaluation"], manifest["training"]
    en = STRINGS["model_card"]["en"]
    at = open_page("model_card")
    ci = f"{summary['auc_ci95'][0]:.3f}–{summary['auc_ci95'][1]:.3f}"
    ev = STRINGS["evidence"]["en"]  # no external scores in the tiny bundle: the internal split leads, said as such
    assert metric(at, ev["m_auc"]) == f"{summary['auc']:.3f}"
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        assert metric(at, ev[f"m_{key}"]) == F.fmt_pct(summary[key])
    assert ev["why_internal"] in text_of(at)

    splits = at.table[0].value
    assert splits[en["col_images"]].tolist() == [training["counts"][s] for s in ("train", "val", "test")]
    assert splits[en["col_patients"]].tolist() == [training["patients"][s] for s in ("train", "val", "test")]
    performance = at.table[1].value.set_index(en["col_metric"])[en["col_value"]]
    assert performance[en["auc"]] == f"{summary['auc']:.3f} (95% CI {ci})"
    assert performance[en["accuracy"]] == F.fmt_pct(summary["accuracy"])

    text = text_of(at)
    assert training["code_commit"] in text
    assert f"random seed {training['split_seed']}" in text
    versions = next(tb.value for tb in at.table if en["col_commit"] in tb.value.columns)
    assert versions[en["col_commit"]].tolist() == [tables.short_commit(m["code_commit"]) for m in manifest["members"]]
    assert versions[en["col_model"]].tolist() == [m["name"] for m in manifest["members"]]
    started = at.table[-1].value  # each member's starting weights, as its manifest records them
    assert started[en["col_initial_weights"]].tolist() == [
        en["init_random"].format(seed=m["initial_weights"]["seed"]) for m in manifest["members"]]
    # The tiny bundle trains on a handful of images: it must say so, prominently.
    assert training["counts"]["train"] < 1000
    assert any(en["research_only"] in e.value for e in at.error)


@pytest.fixture
def with_external(tiny_bundles, point_app_at, tmp_path) -> Path:
    """The tiny bundle plus an external scores report on which the ensemble does worse than a member: half the
    internal test scores, the ensemble's order reversed on the positives."""
    from training.export import report_digests

    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundles, root)
    internal = read(root / BUNDLE, "scores")
    y = [row[0] for row in internal["y"]]
    member = next(iter(internal["members"]))
    positive_scores = sorted(p[0] for p, label in zip(internal["ensemble"], y) if label)
    ensemble = [[positive_scores[-1 - i % len(positive_scores)] if label else p[0]]
                for i, (p, label) in enumerate(zip(internal["ensemble"], y))]
    external = {**internal, "dataset": "later-collection", "split": "external", "ensemble": ensemble,
                "members": {member: [[float(label)] for label in y]}}  # a perfect member
    (root / BUNDLE / "reports" / "scores-external.json").write_text(json.dumps(external))
    manifest = read(root / BUNDLE, "manifest")
    (root / BUNDLE / "manifest.json").write_text(json.dumps({**manifest, "reports": report_digests(root / BUNDLE)}))
    return point_app_at(root) / BUNDLE


def test_model_card_and_evaluation_lead_with_external_numbers(with_external):
    from model.core.metrics import roc_auc
    external = read(with_external, "scores-external")
    auc = roc_auc(np.ravel(external["y"]), np.ravel(external["ensemble"]))
    ev = STRINGS["evidence"]["en"]
    for page in ("model_card", "evaluation"):
        at = open_page(page)
        assert metric(at, ev["m_auc"]) == f"{auc:.3f}"  # the first AUC on the page is the external one
        text = text_of(at)
        lead = ev["set_external"].format(dataset="later-collection")
        assert ev["lead_caption"].split("{set}")[0] + lead in text
        assert ev["why_external"] in text and ev["secondary"].split("(")[0] in text
        member = next(iter(external["members"]))
        assert ev["ensemble_worse"].format(set=lead, ens=f"{auc:.3f}", best=member, auc="1.000") in text


def test_model_card_has_no_research_label_for_a_large_training_set(bundle_dir):
    from pages.lib.common import load_bundles

    open_page("model_card")  # loads the bundles into the cache
    manifest = load_bundles()[0][BUNDLE].manifest
    counts = manifest["training"]["counts"]
    saved = counts["train"]
    counts["train"] = 5000
    try:
        at = open_page("model_card")
    finally:
        counts["train"] = saved
    assert not any(STRINGS["model_card"]["en"]["research_only"] in e.value for e in at.error)


def test_model_card_in_spanish(bundle_dir):
    at = open_page("model_card", lang="es")
    es = STRINGS["model_card"]["es"]
    assert es["h_intended_use"] in [h.value for h in at.header]
    assert any(es["research_only"] in e.value for e in at.error)
    assert es["lim_site"] in text_of(at)


# --- a multiclass bundle: the per-class views -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def multiclass_root(tiny_bundles, tmp_path_factory) -> Path:
    """The tiny bundle's files re-labelled as a three-class bundle, with an evaluation report written by
    training.evaluate.per_class_report itself (so the structure is the export's)."""
    from training.evaluate import per_class_report, summary
    from training.export import report_digests

    root = tmp_path_factory.mktemp("multiclass") / "bundles"
    target = root / "pneumonia-type"
    shutil.copytree(tiny_bundles / BUNDLE, target)
    classes = ["NORMAL", "BACTERIAL", "VIRAL"]
    rng = np.random.default_rng(0)
    y = np.eye(3)[rng.integers(0, 3, 60)]
    ens = {s: y * 0.6 + rng.random((60, 3)) * 0.4 for s in ("val", "test")}
    ens = {s: v / v.sum(1, keepdims=True) for s, v in ens.items()}
    evaluation = {"task": "multiclass", "classes": classes, "split": "internal-test", "n": 60, "n_val": 60,
                  **per_class_report("multiclass", classes, y, y, ens, {"cnn": ens, "mobilenetv2": ens})}
    (target / "reports" / "evaluation.json").write_text(json.dumps(evaluation))
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(name="pneumonia-type", title="Pneumonia type", task="multiclass", classes=classes,
                    operating_points=evaluation["operating_points"], default_operating_point="per-class",
                    evaluation=summary(evaluation), reports=report_digests(target))
    (target / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_multiclass_evaluation_shows_per_class_auc_and_the_confusion_matrix(multiclass_root, point_app_at, monkeypatch):
    point_app_at(multiclass_root)
    monkeypatch.setenv("TORAX_DEFAULT_BUNDLE", "pneumonia-type")  # fail closed: no silent fallback
    evaluation = json.loads((multiclass_root / "pneumonia-type" / "reports" / "evaluation.json").read_text())
    en = STRINGS["evaluation"]["en"]
    at = open_page("evaluation")
    assert metric(at, en["m_macro_auc"]) == f"{evaluation['ensemble']['macro_auc']:.3f}"
    assert metric(at, en["m_accuracy"]) == F.fmt_pct(evaluation["ensemble"]["accuracy"])
    assert values(figure(at, "confusion_chart")["data"][0]["z"]).tolist() == evaluation["confusion_matrix"]
    legend = {tr["name"] for tr in figure(at, "roc_per_class_chart")["data"]}
    for c, r in evaluation["per_class"].items():
        assert f"{c} — AUC {r['auc']:.3f} ({r['auc_ci95'][0]:.3f}–{r['auc_ci95'][1]:.3f})" in legend
    table = at.dataframe[0].value.set_index(en["col_class"])
    for c, r in evaluation["per_class"].items():
        assert table.loc[c, en["col_auc"]] == pytest.approx(r["auc"])
        assert table.loc[c, en["col_support"]] == r["support"]
    assert not at.slider  # no single threshold for a multiclass model


def test_multiclass_model_card_and_dataset_pages_render(multiclass_root, point_app_at, monkeypatch):
    point_app_at(multiclass_root)
    monkeypatch.setenv("TORAX_DEFAULT_BUNDLE", "pneumonia-type")  # fail closed: no silent fallback
    evaluation = json.loads((multiclass_root / "pneumonia-type" / "reports" / "evaluation.json").read_text())
    en = STRINGS["model_card"]["en"]
    at = open_page("model_card")
    assert metric(at, en["m_macro_auc"]) == f"{evaluation['ensemble']['macro_auc']:.3f}"
    per_class = next(t.value for t in at.table
                     if en["col_class"] in t.value.columns and en["col_auc"] in t.value.columns)
    assert per_class[en["col_auc"]].tolist() == [f"{evaluation['per_class'][c]['auc']:.3f}" for c in
                                                 evaluation["classes"]]
    open_page("dataset")


# --- the input-size study (issue 22): table, plot and what it means, from reports/input-size.json ------------------
SIZE_ROWS = [  # (size, val AUC, test AUC, accuracy at the balanced point, latency ms)
    (64, 0.990, 0.985, 0.930, 2.0), (128, 0.996, 0.992, 0.950, 5.0), (224, 0.997, 0.994, 0.955, 12.0)]


def size_report() -> dict:
    return {"what": "one member (same recipe) trained at several square input sizes", "rows": [
        {"size": s, "member": "cnn", "params": 849785, "epochs": 12, "train_seconds": 100.0, "val_auc": v,
         "test_auc": a, "test_auc_ci95": [a - 0.01, min(1.0, a + 0.004)], "test_accuracy": acc,
         "test_sensitivity": acc + 0.01, "test_specificity": acc - 0.02, "balanced_threshold": 0.5,
         "external_auc": a - 0.02, "external_accuracy": acc - 0.05, "external_dataset": "later-collection",
         "latency_ms": ms, **three_class(s)} for s, v, a, acc, ms in SIZE_ROWS]}


THREE_CLASS = {64: (0.780, 0.760, 0.780), 128: (0.800, 0.790, 0.800), 224: (0.810, 0.800, 0.810)}  # val, test, BvV


def three_class(size: int) -> dict:
    val, test, bvv = THREE_CLASS[size]
    return {"val_3class_accuracy": val, "val_bacterial_vs_viral_auc": bvv + 0.01, "test_3class_accuracy": test,
            "test_bacterial_vs_viral_auc": bvv, "external_3class_accuracy": test + 0.1}


def test_the_verdict_is_chosen_on_val_and_says_what_the_smaller_size_loses():
    verdict = tables.input_size_verdict(tables.input_size_table(size_report()))
    assert verdict["enough"] == 128 and verdict["best"] == 224  # 0.996 is within 0.005 of 0.997
    assert verdict["smaller"]["size"] == 64
    assert verdict["smaller"]["test_auc_loss"] == pytest.approx(0.007)
    assert verdict["smaller"]["accuracy_loss"] == pytest.approx(0.02)
    assert verdict["smaller"]["speedup"] == pytest.approx(2.5)
    assert verdict["largest"]["slowdown"] == pytest.approx(2.4)
    versus = verdict["versus_best"]  # what 128 gives up against 224, the best on val
    assert (versus["size"], versus["test_auc_loss"], versus["accuracy_loss"], versus["speedup"]) == \
        (224, pytest.approx(0.002), pytest.approx(0.005), pytest.approx(2.4))
    assert (versus["external_auc"], versus["best_external_auc"]) == (pytest.approx(0.972), pytest.approx(0.974))
    one = {"rows": size_report()["rows"][:1]}
    assert tables.input_size_verdict(tables.input_size_table(one)) is None


def test_the_three_class_side_names_the_val_best_size_and_what_the_binary_choice_gives_up():
    table = tables.input_size_table(size_report())
    three = tables.three_class_size_verdict(table, binary_enough=128)
    assert (three["best"], three["best_val_accuracy"], three["best_test_accuracy"]) == (224, 0.81, 0.80)
    gives_up = three["binary_enough"]
    assert (gives_up["size"], gives_up["val_accuracy_change"], gives_up["test_accuracy_change"],
            gives_up["test_bvv_auc_change"]) == (128, pytest.approx(-0.01), pytest.approx(-0.01), pytest.approx(-0.01))
    assert "binary_enough" not in tables.three_class_size_verdict(table, binary_enough=224)
    binary_only = {"rows": [{k: v for k, v in r.items() if k not in three_class(64)} for r in size_report()["rows"]]}
    assert tables.three_class_size_verdict(tables.input_size_table(binary_only)) is None


def test_evaluation_shows_the_input_size_table_plot_and_sentence(tiny_bundles, point_app_at, tmp_path):
    from training.export import attach_report

    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundles, root)
    (tmp_path / "input-size.json").write_text(json.dumps(size_report()))
    attach_report(root / BUNDLE, tmp_path / "input-size.json")  # the manifest now lists its sha256
    assert "input-size.json" in read(root / BUNDLE, "manifest")["reports"]
    point_app_at(root)
    at = open_page("evaluation")
    ev = STRINGS["evaluation"]["en"]
    text = text_of(at)
    assert ev["h_input_size"] in text
    assert ev["size_enough"].format(size=128, val_auc="0.996", best=224, best_val_auc="0.997",
                                    tolerance="0.005") in text
    assert ev["size_smaller_loses"].format(size=64, auc="0.007", points="2.0", speedup="2.5") in text
    assert ev["size_versus_best"].format(size=224, auc="0.002", points="0.5", speedup="2.4") in text
    assert ev["size_versus_best_external"].format(auc="0.972", best_auc="0.974", size=224) in text
    chart = figure(at, "input_size_chart")
    names = [trace.get("name") for trace in chart["data"]]
    assert ev["size_test_auc"] in names and ev["size_external_auc"] in names
    test_auc = next(tr for tr in chart["data"] if tr.get("name") == ev["size_test_auc"])
    assert values(test_auc["y"]).tolist() == pytest.approx([r[2] for r in SIZE_ROWS])
    table = next(d.value for d in at.dataframe if ev["col_input_size"] in d.value.columns)
    assert table[ev["col_input_size"]].tolist() == ["64 × 64", "128 × 128", "224 × 224"]
    assert table[ev["col_external_accuracy"]].tolist() == [F.fmt_pct(r[3] - 0.05) for r in SIZE_ROWS]
    assert ev["size_three_class"].format(size=224, val_acc="81.0%", test_acc="80.0%", bvv="0.810") in text
    assert ev["size_three_class_binary_enough"].format(size=128, best=224, val_points="−1.0", test_points="−1.0",
                                                       bvv="−0.010") in text
    three = next(d.value for d in at.dataframe if ev["col_test_3class_accuracy"] in d.value.columns)
    assert three[ev["col_input_size"]].tolist() == ["64 × 64", "128 × 128", "224 × 224"]
    assert three[ev["col_test_3class_accuracy"]].tolist() == [F.fmt_pct(THREE_CLASS[r[0]][1]) for r in SIZE_ROWS]


def test_a_member_that_cannot_be_read_is_explained_where_it_is_needed(tiny_bundles, point_app_at, tmp_path):
    """The app verifies every bundle when it starts but loads Keras members only on the pages that predict. A member
    whose bytes match the manifest's sha256 but are not a Keras file leaves the reading pages working and makes
    Diagnose and Worklist say which model was not loaded, with no traceback."""
    from model.core.bundle import sha256_file

    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundles / BUNDLE, root / BUNDLE)
    manifest = read(root / BUNDLE, "manifest")
    member = root / BUNDLE / manifest["members"][0]["file"]
    member.write_bytes(b"not a keras archive")
    manifest["members"][0]["sha256"] = sha256_file(member)
    (root / BUNDLE / "manifest.json").write_text(json.dumps(manifest))
    point_app_at(root)

    for page in ("model_card", "dataset"):
        at = open_page(page)
        assert not [e.value for e in at.error if "was not loaded" in e.value]
        assert at.title and at.markdown
    for page in ("diagnose", "worklist"):
        at = open_page(page)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and f"The model '{BUNDLE}' was not loaded" in errors[0], errors
        assert "could not be loaded (code bundle_error)" in errors[0].replace("\\", "")  # markdown-escaped
