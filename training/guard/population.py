"""Refit the "child or adult?" check with children from a new site, and measure it by cross-validation there.

Trained on one collection only, the population check flagged 6.7 % of the children of a later collection from the
same hospital as adults (kermany_external), three times its val rate. This step keeps the radiograph classifier
(cxr_*) as it is and refits only the population classifier (pop_*: PCA, network, threshold) with the site's
children added to its training and validation pools, split by patient:

- Cross-validation first: the site's patients go into `folds` folds; each fold's children are scored by a check
  fitted without them. Their pooled flag rate is the site false-alarm figure reported, next to the adult catch rate
  and the original collection's child false-alarm rate on the usual held-out test patients.
- Then the shipped check is fitted on every site child (3/4 to train, 1/4 to val by patient).

The refit uses a wider PCA (POP_REFIT_PCA_K components) and hidden layer than the original fit; serving reads
both sizes from the parameters. The threshold flags POP_FALSE_ALARM_VAL of the pooled val children (both
collections). Tried on the same folds and rejected: the original sizes (site children 2.2 %, adults 90 %), and a
threshold that holds the rate on each collection's val children separately (1.3 % and 90 %): the small site's
val quantile is close to its maximum, which costs adults.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from model.core import guard as G
from training import data as data_lib
from training.guard.build import _json_default, _npz_bytes
from training.guard.fit import POP_FALSE_ALARM_VAL, fit_pca, prefixed, train_mlp
from training.guard.measure import rate
from training.guard.radiographs import load_working_copies, read_radiographs, split_groups

SITE_WEIGHT = 8.0  # a site child counts this many times in training: a few hundred beside ~3,000 others
POP_REFIT_PCA_K, POP_REFIT_HIDDEN = 96, 32


def _fit(thumbs, adult, site, train, val, seed) -> tuple[dict, float, np.ndarray]:
    params = prefixed(fit_pca(thumbs[train], POP_REFIT_PCA_K), "pop_pca_")
    x = np.stack([G.population_features(t.reshape(G.THUMB, G.THUMB), params) for t in thumbs])
    # Repeating the site's rows is how the balanced, full-batch trainer gives them more weight.
    reps = np.where(site & train, int(SITE_WEIGHT), 1) * train
    idx = np.repeat(np.arange(len(x)), reps)
    model = prefixed(train_mlp(x[idx], adult[idx], x[val], adult[val], hidden=POP_REFIT_HIDDEN, l2=3e-3,
                                    seed=seed), "pop_")
    params.update(model)
    p_adult = G.mlp(x, params, "pop_")
    threshold = float(np.quantile(p_adult[val & (adult == 0)], 1 - POP_FALSE_ALARM_VAL))
    return params, threshold, p_adult


def refit_population(kermany: str | Path, nih: str | Path, site: str | Path, params_dir: str | Path,
                     seed: int = 0, folds: int = 5, log=print) -> dict:
    params_dir = Path(params_dir)
    info = json.loads((params_dir / "metrics.json").read_text())
    params = dict(G.load_params(params_dir))

    df = read_radiographs(kermany, nih)
    df["split"] = split_groups(df["group"].tolist(), seed)  # the same patients as the original guard
    site_df = data_lib.read_dataset(site)
    site_rows = pd.DataFrame({"path": site_df["path"], "dataset": Path(site).name,
                              "group": "site:" + site_df["patient_id"].astype(str), "kind": "site",
                              "population": "pediatric", "age": np.nan, "split": "site"})
    df = pd.concat([df, site_rows], ignore_index=True)
    log(f"decoding {len(df)} radiographs ...")
    thumbs = np.stack([G.thumbnail(w) for w in load_working_copies(df["path"].tolist())]).reshape(len(df), -1)

    in_task = df["population"].isin(["pediatric", "adult"]).to_numpy()
    adult = (df["population"] == "adult").to_numpy().astype(float)
    split = df["split"].to_numpy()
    is_site = split == "site"
    groups = df["group"].to_numpy()
    site_groups = np.array(sorted(set(groups[is_site])))
    fold_of = dict(zip(site_groups, np.random.default_rng(seed).permutation(len(site_groups)) % folds))
    fold = np.array([fold_of.get(g, -1) for g in groups])
    base_train, base_val = (split == "train") & in_task, (split == "val") & in_task
    test_children = (split == "test") & (df["population"] == "pediatric").to_numpy()
    test_adults = (split == "test") & (adult == 1)

    def site_train_val(mask):
        """3/4 of the given site patients to train, 1/4 to val, by patient."""
        chosen = np.array(sorted(set(groups[mask])))
        val_groups = set(chosen[np.random.default_rng(seed + 1).permutation(len(chosen)) % 4 == 0])
        in_val = np.array([g in val_groups for g in groups])
        return mask & ~in_val, mask & in_val

    flags_site = np.zeros(len(df), bool)
    per_fold = []
    for k in range(folds):
        s_train, s_val = site_train_val(is_site & (fold != k))
        _, threshold, p_adult = _fit(thumbs, adult, is_site, base_train | s_train, base_val | s_val, seed)
        held = is_site & (fold == k)
        flags_site[held] = p_adult[held] >= threshold
        per_fold.append({"fold": k, "threshold": threshold, "site_children": rate(flags_site[held]),
                         "adults_test": rate(p_adult[test_adults] >= threshold)})
        log(f"fold {k}: site children flagged {flags_site[held].sum()}/{held.sum()}, adults caught "
            f"{per_fold[-1]['adults_test']['rate']}")

    s_train, s_val = site_train_val(is_site)
    pop, threshold, p_adult = _fit(thumbs, adult, is_site, base_train | s_train, base_val | s_val, seed)
    params.update({k: np.asarray(v) for k, v in pop.items()})
    params["pop_threshold"] = np.float32(threshold)
    minors = (split == "test") & (df["population"] == "minor").to_numpy()
    population = {
        "method": "refit with site children (training/guard/population.py)",
        "site": Path(site).name, "site_weight": SITE_WEIGHT, "folds": folds, "pca_k": POP_REFIT_PCA_K,
        "hidden": POP_REFIT_HIDDEN, "threshold_rule": f"{1 - POP_FALSE_ALARM_VAL:.0%} quantile of pooled val children",
        "site_children_cross_validated": rate(flags_site[is_site]),
        "adults_caught_test_cross_validated_mean": float(np.mean([f["adults_test"]["rate"] for f in per_fold])),
        "per_fold": per_fold,
        # The keys of the original measurement, for the shipped check on the usual held-out test patients:
        "catch_rate_on_adults": rate(p_adult[test_adults] >= threshold),
        "false_alarm_on_children": rate(p_adult[test_children] >= threshold),
        "shipped": {"threshold": threshold, "adults_caught_test": rate(p_adult[test_adults] >= threshold),
                    "children_flagged_test": rate(p_adult[test_children] >= threshold),
                    "minors_7_17_flagged_test": rate(p_adult[minors] >= threshold),
                    "site_children_flagged_in_sample": rate(p_adult[is_site] >= threshold)},
    }
    data = _npz_bytes(params)
    info["previous_population"] = {"threshold": info["thresholds"]["population_adult"],
                                   "metrics": info["metrics"].get("population")}
    info["metrics"]["population"] = population
    info["thresholds"]["population_adult"] = float(threshold)
    info["sha256"] = hashlib.sha256(data).hexdigest()
    info["population_refit"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    (params_dir / "guard.npz").write_bytes(data)
    (params_dir / "metrics.json").write_text(json.dumps(info, indent=2, default=_json_default) + "\n")
    log(json.dumps({k: v for k, v in population.items() if k != "per_fold"}, default=_json_default))
    return population
