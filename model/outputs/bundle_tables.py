"""Shape a bundle's reports (`reports/*.json`, `reports/history-*.csv`, the manifest) into the small tables and
series that the Dataset, Evaluation and Model card pages draw.

Pure pandas/numpy: no Streamlit, no Keras. Nothing the export already computed is recomputed here; the only
per-threshold work (confusion counts, the threshold sweep, the error lists) runs on the stored per-image test
scores with `model.core.metrics`, so the app and the training report can never disagree.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from model.core import metrics as M
from model.outputs.formatting import fmt_num, fmt_nums, is_number

SPLIT_ORDER = ("train", "val", "test")
SMALL_TRAINING_SET = 1000  # fewer training images than this: "research use only"


# --- dataset (eda.json) -----------------------------------------------------------------------------------------------

def _split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def counts_frame(eda: dict) -> pd.DataFrame:
    """One row per split × label × subtype: split, label, subtype, images (train, val, test order)."""
    df = pd.DataFrame(eda["counts"]).rename(columns={eda.get("label_column", "label"): "label"})
    df = df.assign(_r=df["split"].map(_split_rank)).sort_values(["_r", "label", "subtype"]).drop(columns="_r")
    return df.reset_index(drop=True)[["split", "label", "subtype", "images"]]


def counts_pivot(eda: dict) -> pd.DataFrame:
    """Rows label · subtype, one column per split and a total; the last row is the patients per split."""
    df = counts_frame(eda)
    splits = sorted(df["split"].unique(), key=_split_rank)
    table = df.pivot_table(index=["label", "subtype"], columns="split", values="images", aggfunc="sum",
                           fill_value=0)[splits]
    table["total"] = table.sum(axis=1)
    table.loc[("all", "all"), :] = table.sum(axis=0)
    table.columns.name = None
    return table.astype(int).reset_index()


def patients_frame(eda: dict) -> pd.DataFrame:
    """split, images, patients, images per patient (mean)."""
    df = counts_frame(eda)
    images = df.groupby("split")["images"].sum()
    patients = pd.Series(eda.get("patients_per_split", {}), dtype=float)
    out = pd.DataFrame({"images": images, "patients": patients.reindex(images.index)})
    out["images_per_patient"] = out["images"] / out["patients"]
    out = out.reset_index(names="split")
    return out.iloc[out["split"].map(_split_rank).argsort()].reset_index(drop=True)


def images_per_patient_frame(eda: dict) -> pd.DataFrame:
    return pd.DataFrame(eda.get("images_per_patient", []), columns=["images", "patients"])


def balance_frame(eda: dict) -> pd.DataFrame:
    """label, stage ("before" / "after" de-duplication), images, share of that stage."""
    rows = [{"label": label, "stage": stage, "images": int(n)}
            for stage, key in (("before", "balance_before_dedup"), ("after", "balance_after_dedup"))
            for label, n in (eda.get(key) or {}).items()]
    df = pd.DataFrame(rows, columns=["label", "stage", "images"])
    df["share"] = df["images"] / df.groupby("stage")["images"].transform("sum")
    return df.sort_values(["stage", "label"], ascending=[False, True]).reset_index(drop=True)


def sizes_frame(eda: dict) -> pd.DataFrame:
    """width, height, aspect (width / height), label; images whose size is unknown are left out."""
    size = eda.get("size") or {}
    df = pd.DataFrame({"width": size.get("width", []), "height": size.get("height", []),
                       "label": size.get("label", [])}).dropna()
    df = df.astype({"width": int, "height": int})
    df["aspect"] = df["width"] / df["height"]
    return df.reset_index(drop=True)


def size_counts(eda: dict, top: int = 8) -> pd.DataFrame:
    """The most common image sizes: size ("W×H"), images."""
    df = sizes_frame(eda)
    counts = (df["width"].astype(str) + "×" + df["height"].astype(str)).value_counts().head(top)
    return counts.rename_axis("size").reset_index(name="images")


def histogram_frame(eda: dict) -> pd.DataFrame:
    """label, intensity (bin centre, 0–255), density (share of that class's pixels)."""
    rows = []
    for label, h in (eda.get("intensity_histogram") or {}).items():
        edges = np.asarray(h["edges"], float)
        centres = (edges[:-1] + edges[1:]) / 2
        rows += [{"label": label, "intensity": float(c), "density": float(d)} for c, d in zip(centres, h["density"])]
    return pd.DataFrame(rows, columns=["label", "intensity", "density"])


def mean_images(eda: dict) -> dict[str, np.ndarray]:
    """{label: 64×64 float array, 0–255}: the average training-resolution image of each class."""
    return {label: np.asarray(a, dtype=float) for label, a in (eda.get("mean_image") or {}).items()}


def source_summary(eda: dict) -> dict | None:
    """How many images came from originals and how many only as squashed low-resolution copies, with the sizes
    involved, or None when the dataset does not record it."""
    kinds = eda.get("source_kind") or {}
    if not kinds:
        return None
    sizes = sizes_frame(eda)
    squares = sizes[sizes["width"] == sizes["height"]]
    squashed_side = int(squares["width"].mode().iloc[0]) if len(squares) else None
    long_side = int(np.maximum(sizes["width"], sizes["height"]).max()) if len(sizes) else None
    original = int(sum(n for k, n in kinds.items() if k == "original"))
    return {"total": int(sum(kinds.values())), "original": original,
            "low_resolution": int(sum(n for k, n in kinds.items() if k != "original")),
            "original_long_side": long_side, "low_resolution_side": squashed_side}


# --- per-image test scores (scores.json) ----------------------------------------------------------------------------

def binary_scores(scores: dict) -> tuple[np.ndarray, np.ndarray]:
    """(y, ensemble probability) of a binary bundle's test images, as 1-D arrays."""
    y = np.asarray(scores["y"], dtype=int).reshape(len(scores["y"]), -1)[:, 0]
    p = np.asarray(scores["ensemble"], dtype=float).reshape(len(scores["ensemble"]), -1)[:, 0]
    return y, p


def at_threshold(y, p, threshold: float, prevalence: float | None = None) -> dict:
    """Confusion counts and rates at a threshold (positive when probability >= threshold)."""
    counts = M.confusion(y, p, threshold)
    return {**counts, **M.rates(counts, prevalence)}


def threshold_sweep(y, p, points: int = 201) -> pd.DataFrame:
    """threshold, sensitivity, specificity, ppv, npv over an even grid on [0, 1] merged with the score quantiles
    (so a model whose scores crowd into a narrow band still gets a readable curve)."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, float)
    grid = np.unique(np.r_[np.linspace(0, 1, points), np.quantile(p, np.linspace(0, 1, points))]) if len(p) else \
        np.linspace(0, 1, points)
    pred = p[None, :] >= grid[:, None]
    tp, fp = (pred & y).sum(1), (pred & ~y).sum(1)
    fn, tn = y.sum() - tp, (~y).sum() - fp

    def ratio(a, b):
        return np.divide(a, b, out=np.full(len(a), np.nan), where=b > 0)

    return pd.DataFrame({"threshold": grid, "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
                         "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)})


def subtype_sensitivity(scores: dict, threshold: float) -> dict[str, float]:
    """{subtype: sensitivity at the threshold} over the positive test images (e.g. bacteria / virus); {} when the
    scores carry no subtype."""
    if not scores.get("subtype"):
        return {}
    y, p = binary_scores(scores)
    subtype = np.asarray(scores["subtype"])
    out = {}
    for s in sorted(set(subtype[y == 1])):
        m = (subtype == s) & (y == 1)
        out[str(s)] = float((p[m] >= threshold).mean())
    return out


def errors(scores: dict, threshold: float, limit: int = 6) -> dict[str, list[dict]]:
    """{"fp": [...], "fn": [...]}: the most confident mistakes at a threshold, each {path, probability, subtype}.
    False positives by highest probability first, false negatives by lowest first."""
    y, p = binary_scores(scores)
    paths = scores.get("path") or [None] * len(y)
    subtype = scores.get("subtype") or [None] * len(y)
    pred = p >= threshold

    def rows(mask, order):
        idx = np.nonzero(mask)[0]
        idx = idx[np.argsort(order * p[idx], kind="stable")][:limit]
        return [{"path": paths[i], "probability": float(p[i]), "subtype": subtype[i]} for i in idx]

    return {"fp": rows(pred & (y == 0), -1), "fn": rows(~pred & (y == 1), 1)}


# --- evaluation.json --------------------------------------------------------------------------------------------------

def scorers(evaluation: dict) -> list[tuple[str, dict]]:
    """[(name, binary report)]: the ensemble first, then the members."""
    return [("ensemble", evaluation["ensemble"])] + list(evaluation.get("members", {}).items())


def member_table(evaluation: dict, manifest: dict) -> pd.DataFrame:
    """model, auc, ci_low, ci_high, average_precision, val_auc, temperature, bias (the last three from the
    manifest) — ensemble first."""
    info = {m["name"]: m for m in manifest.get("members", [])}
    rows = []
    for name, r in scorers(evaluation):
        ci = r.get("auc_ci95") or [np.nan, np.nan]
        rows.append({"model": name, "auc": r.get("auc"), "ci_low": ci[0], "ci_high": ci[1],
                     "average_precision": r.get("average_precision"),
                     "val_auc": info.get(name, {}).get("val_auc", np.nan),
                     "temperature": info.get(name, {}).get("temperature", np.nan),
                     "bias": info.get(name, {}).get("bias", np.nan)})
    return pd.DataFrame(rows)


def curve_frame(evaluation: dict, kind: str) -> pd.DataFrame:
    """model, x, y, threshold of every scorer's ROC (x = fpr, y = tpr) or PR (x = recall, y = precision) curve."""
    frames = []
    for name, r in scorers(evaluation):
        c = r[kind]
        x, y = (c["fpr"], c["tpr"]) if kind == "roc" else (c["recall"], c["precision"])
        frames.append(pd.DataFrame({"model": name, "x": x, "y": y, "threshold": c.get("threshold", [np.nan] * len(x))}))
    return pd.concat(frames, ignore_index=True)


def operating_point_table(manifest: dict, evaluation: dict | None) -> pd.DataFrame:
    """One row per operating point: name, rule, target, threshold, val sensitivity/specificity (where it was
    chosen), and the internal-test counts and rates at that same threshold."""
    test = ((evaluation or {}).get("ensemble") or {}).get("operating_points", {})
    rows = []
    for op in manifest.get("operating_points", []):
        if "threshold" not in op:
            continue
        t = test.get(op["name"], {})
        rows.append({"name": op["name"], "rule": op.get("rule"), "target": op.get("target"),
                     "threshold": op["threshold"], "chosen_on": op.get("chosen_on"),
                     "val_sensitivity": op.get("val_sensitivity"), "val_specificity": op.get("val_specificity"),
                     **{f"test_{k}": t.get(k) for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy",
                                                        "tp", "fp", "tn", "fn")}})
    return pd.DataFrame(rows)


def subtype_table(evaluation: dict) -> pd.DataFrame:
    """operating_point, subtype, sensitivity on the internal test split."""
    rows = [{"operating_point": name, "subtype": s, "sensitivity": v}
            for name, op in evaluation.get("ensemble", {}).get("operating_points", {}).items()
            for s, v in (op.get("sensitivity_by_subtype") or {}).items()]
    return pd.DataFrame(rows, columns=["operating_point", "subtype", "sensitivity"])


def reliability_frame(calibration: dict) -> pd.DataFrame:
    """stage ("before" / "after"), mean_predicted, observed, n, lo, hi: the reliability-diagram bins."""
    frames = [pd.DataFrame(calibration.get(f"bins_{stage}") or [],
                           columns=["lo", "hi", "n", "mean_predicted", "observed"]).assign(stage=stage)
              for stage in ("before", "after")]
    return pd.concat(frames, ignore_index=True)


def per_class_table(evaluation: dict) -> pd.DataFrame:
    """Multiclass / multilabel: class, auc, ci_low, ci_high, support, threshold, sensitivity, specificity, ppv, npv,
    tp, fp, tn, fn (one-vs-rest on the internal test split)."""
    rows = []
    for c, r in evaluation.get("per_class", {}).items():
        ci = r.get("auc_ci95") or [np.nan, np.nan]
        rows.append({"class": c, "auc": r.get("auc"), "ci_low": ci[0], "ci_high": ci[1], "support": r.get("support"),
                     "threshold": r.get("threshold"),
                     **{k: r.get(k) for k in ("sensitivity", "specificity", "ppv", "npv", "tp", "fp", "tn", "fn")}})
    return pd.DataFrame(rows)


def member_per_class_table(evaluation: dict) -> pd.DataFrame:
    """Rows: ensemble then each member; columns: one AUC per class."""
    rows = {"ensemble": {c: r.get("auc") for c, r in evaluation.get("per_class", {}).items()}}
    rows.update({name: m.get("per_class_auc", {}) for name, m in evaluation.get("members", {}).items()})
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model").reset_index()


def per_class_curves(evaluation: dict) -> pd.DataFrame:
    """class, fpr, tpr: the one-vs-rest ROC curve of each class (ensemble)."""
    frames = [pd.DataFrame({"class": c, "fpr": r["roc"]["fpr"], "tpr": r["roc"]["tpr"]})
              for c, r in evaluation.get("per_class", {}).items() if r.get("roc")]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["class", "fpr", "tpr"])


# --- training curves (history-<member>.csv) --------------------------------------------------------------------------

def read_histories(reports_dir: str | Path, read=None) -> pd.DataFrame:
    """All members' Keras training histories: member, epoch (from 1), then the logged columns (auc, val_auc,
    loss, val_loss, ...). Empty when the bundle has none. `read(file name)`: the file's bytes or None when it may
    not be shown (`Bundle.report_bytes`, which checks them against the manifest)."""
    frames = []
    for path in sorted(Path(reports_dir).glob("history-*.csv")):
        data = read(path.name) if read else path.read_bytes()
        if data is None:
            continue
        df = pd.read_csv(io.BytesIO(data))
        df.insert(0, "member", path.stem.removeprefix("history-"))
        df["epoch"] = (df["epoch"] if "epoch" in df else pd.Series(range(len(df)))) + 1
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["member", "epoch"])


def overfitting_gap(history: pd.DataFrame) -> pd.DataFrame:
    """Per member at its best validation epoch: best_epoch, epochs, val_auc, train_auc, gap (train − val)."""
    rows = []
    for member, h in history.groupby("member", sort=False):
        if "val_auc" not in h or h["val_auc"].isna().all():
            continue
        best = h.loc[h["val_auc"].idxmax()]
        train_auc = best.get("auc", np.nan)
        rows.append({"member": member, "epochs": int(h["epoch"].max()), "best_epoch": int(best["epoch"]),
                     "val_auc": float(best["val_auc"]), "train_auc": float(train_auc),
                     "gap": float(train_auc - best["val_auc"])})
    return pd.DataFrame(rows, columns=["member", "epochs", "best_epoch", "val_auc", "train_auc", "gap"])


# --- model card (manifest.json) ---------------------------------------------------------------------------------------

def is_small_training_set(manifest: dict, limit: int = SMALL_TRAINING_SET) -> bool:
    """True when the bundle is marked research use only at export, or its training split is smaller than `limit`
    images (or its size was not recorded)."""
    if manifest.get("research_use_only"):
        return True
    n = (manifest.get("training") or {}).get("counts", {}).get("train")
    return not is_number(n) or n < limit


def split_table(manifest: dict) -> pd.DataFrame:
    """split, images, patients — from the manifest's training record."""
    training = manifest.get("training") or {}
    counts, patients = training.get("counts", {}), training.get("patients", {})
    splits = sorted(set(counts) | set(patients), key=_split_rank)
    return pd.DataFrame({"split": splits, "images": [counts.get(s) for s in splits],
                         "patients": [patients.get(s) for s in splits]})


def dataset_key(manifest: dict) -> str:
    """Which known dataset a bundle was trained on ("kermany", "nih14"), or "other"."""
    data = str((manifest.get("training") or {}).get("data", "")).lower()
    if "kermany" in data or "chest_xray" in data:
        return "kermany"
    if "nih" in data or "chestx-ray14" in data:
        return "nih14"
    return "other"


def short_commit(commit) -> str:
    """The first 8 characters of a commit, keeping a "-dirty" mark (uncommitted changes when it was trained)."""
    if not commit:
        return "—"
    commit = str(commit)
    dirty = commit.endswith("-dirty")
    return commit[:8] + ("-dirty" if dirty else "")


def version_table(manifest: dict) -> pd.DataFrame:
    """One row per member: name, arch, params, epochs_run, val_auc, temperature, train_seconds, code_commit, sha256,
    and initial_weights (the manifest's record of where the member's starting weights came from, or None)."""
    rows = [{"name": m.get("name"), "arch": m.get("arch"), "params": m.get("params"),
             "epochs_run": m.get("epochs_run"), "val_auc": m.get("val_auc"), "temperature": m.get("temperature"),
             "bias": m.get("bias"), "train_seconds": m.get("train_seconds"),
             "code_commit": short_commit(m.get("code_commit")), "sha256": (m.get("sha256") or "")[:12],
             "initial_weights": m.get("initial_weights") if isinstance(m.get("initial_weights"), dict) else None}
            for m in manifest.get("members", [])]
    frame = pd.DataFrame(rows)
    return frame.drop(columns="bias") if frame.empty or frame["bias"].isna().all() else frame


def initial_weights_parts(record: dict | None) -> dict | None:
    """What a member started from, for the model card: {"kind": "random", "seed"}, or {"kind": "pretrained",
    "weights", "package", "licence", "sha256"} (package as "registry name@version"), or {"kind": "file", "file"};
    None when the manifest does not record it (members trained before it was recorded)."""
    if not record:
        return None
    if record.get("kind") == "random":
        return {"kind": "random", "seed": record.get("seed")}
    if record.get("kind") == "pretrained backbone":
        return {"kind": "pretrained", "weights": record.get("weights") or record.get("name") or "?",
                "package": f"{record.get('registry', '?')} {record.get('package', '?')}@{record.get('version', '?')}",
                "licence": record.get("licence") or "?", "sha256": (record.get("sha256") or "")[:12]}
    return {"kind": "file", "file": Path(str(record.get("file") or "?")).name}


def calibration_text(calibration: dict) -> str:
    """"cnn: T = 1.09, b = 2.08; …": each member's fitted temperature (and bias: one for Platt scaling, one per
    class for vector scaling)."""
    temps, biases = calibration.get("per_member") or {}, calibration.get("bias_per_member") or {}
    parts = []
    for member, temp in temps.items():
        text = f"{member}: T = {fmt_num(temp, 2)}"
        bias = biases.get(member)
        if is_number(bias) or (isinstance(bias, list) and any(bias)):
            text += f", b = {fmt_nums(bias, 2)}"
        parts.append(text)
    return "; ".join(parts)


def hardware_text(hardware) -> str:
    """A one-line description of the training machine."""
    if not isinstance(hardware, dict):
        return str(hardware or "—")
    devices = ", ".join(hardware.get("devices", [])) or "?"
    parts = [f"{hardware.get('backend', '?')} (Keras {hardware.get('keras', '?')})", f"devices: {devices}"]
    if hardware.get("cpu_count"):
        parts.append(f"{hardware['cpu_count']} CPU cores")
    if hardware.get("python"):
        parts.append(f"Python {hardware['python']}")
    return " · ".join(parts)


# --- input-size.json (training.size_study) ----------------------------------------------------------------------------

ENOUGH_VAL_AUC = 0.005  # a size is "enough" when its val AUC is within this of the best size's


def input_size_table(report: dict) -> pd.DataFrame:
    """size, params, val_auc, test_auc, ci_low, ci_high, test_accuracy, sensitivity, specificity, latency_ms,
    external_auc, external_accuracy: one row per input size, smallest first."""
    rows = []
    for r in report.get("rows", []):
        ci = r.get("test_auc_ci95") or [np.nan, np.nan]
        rows.append({"size": int(r["size"]), "params": r.get("params"), "val_auc": r.get("val_auc"),
                     "test_auc": r.get("test_auc"), "ci_low": ci[0], "ci_high": ci[1],
                     "test_accuracy": r.get("test_accuracy"), "sensitivity": r.get("test_sensitivity"),
                     "specificity": r.get("test_specificity"), "latency_ms": r.get("latency_ms"),
                     "external_auc": r.get("external_auc"), "external_accuracy": r.get("external_accuracy"),
                     **{k: r.get(k, np.nan) for k in THREE_CLASS_COLUMNS}})
    return pd.DataFrame(rows).sort_values("size", ignore_index=True) if rows else pd.DataFrame()


THREE_CLASS_COLUMNS = ("val_3class_accuracy", "val_bacterial_vs_viral_auc", "test_3class_accuracy",
                       "test_bacterial_vs_viral_auc", "external_3class_accuracy")


def three_class_size_verdict(table: pd.DataFrame, binary_enough: int | None = None) -> dict | None:
    """The three-class side of the study, where it was run: the size whose three-class head is most accurate on val
    (the smaller one on a tie), and how the size that is enough for the binary question differs from it (that size
    minus the best) on val and on the internal test. None without at least two sizes with a val three-class
    accuracy."""
    if table.empty or "val_3class_accuracy" not in table:
        return None
    rows = table.dropna(subset=["val_3class_accuracy"])
    if len(rows) < 2:
        return None
    best = rows.loc[rows["val_3class_accuracy"].idxmax()]  # idxmax keeps the first, i.e. the smaller size
    verdict = {"best": int(best["size"]), "best_val_accuracy": float(best["val_3class_accuracy"]),
               "best_test_accuracy": float(best["test_3class_accuracy"]),
               "best_test_bvv_auc": float(best["test_bacterial_vs_viral_auc"])}
    if binary_enough is not None and binary_enough != verdict["best"] and binary_enough in set(rows["size"]):
        other = rows[rows["size"] == binary_enough].iloc[0]
        verdict["binary_enough"] = {
            "size": binary_enough,
            "val_accuracy_change": float(other["val_3class_accuracy"]) - verdict["best_val_accuracy"],
            "test_accuracy_change": float(other["test_3class_accuracy"]) - verdict["best_test_accuracy"],
            "test_bvv_auc_change": float(other["test_bacterial_vs_viral_auc"]) - verdict["best_test_bvv_auc"]}
    return verdict


def input_size_verdict(table: pd.DataFrame, tolerance: float = ENOUGH_VAL_AUC) -> dict | None:
    """Which size is enough, chosen on val: the smallest whose val AUC is within `tolerance` of the best size's.
    Then what it gives up against the best size (internal test; external reported beside it, never used to choose),
    what the next smaller size loses on the internal test (AUC, accuracy at its balanced point) and what it saves
    (latency). None without at least two sizes with a val AUC."""
    rows = table.dropna(subset=["val_auc"]) if not table.empty else table
    if len(rows) < 2:
        return None
    best = rows.loc[rows["val_auc"].idxmax()]
    enough = rows[rows["val_auc"] >= best["val_auc"] - tolerance].iloc[0]
    verdict = {"enough": int(enough["size"]), "best": int(best["size"]), "tolerance": tolerance,
               "enough_val_auc": float(enough["val_auc"]), "best_val_auc": float(best["val_auc"]),
               "enough_test_auc": enough["test_auc"], "enough_latency_ms": enough["latency_ms"]}
    if enough["size"] != best["size"]:  # what choosing the enough size gives up against the best one
        verdict["versus_best"] = {"size": int(best["size"]), "test_auc_loss": best["test_auc"] - enough["test_auc"],
                                  "accuracy_loss": best["test_accuracy"] - enough["test_accuracy"],
                                  "speedup": best["latency_ms"] / enough["latency_ms"] if enough["latency_ms"]
                                  else np.nan,
                                  "external_auc": enough.get("external_auc"),
                                  "best_external_auc": best.get("external_auc")}
    smaller = rows[rows["size"] < enough["size"]]
    if len(smaller):
        s = smaller.iloc[-1]
        verdict["smaller"] = {"size": int(s["size"]), "test_auc_loss": enough["test_auc"] - s["test_auc"],
                              "accuracy_loss": enough["test_accuracy"] - s["test_accuracy"],
                              "val_auc_loss": enough["val_auc"] - s["val_auc"],
                              "speedup": enough["latency_ms"] / s["latency_ms"] if s["latency_ms"] else np.nan}
    larger = rows[rows["size"] > enough["size"]]
    if len(larger):
        big = larger.iloc[-1]
        verdict["largest"] = {"size": int(big["size"]), "test_auc_gain": big["test_auc"] - enough["test_auc"],
                              "slowdown": big["latency_ms"] / enough["latency_ms"] if enough["latency_ms"]
                              else np.nan}
    return verdict
