"""Is the model still doing here what it did when it was checked? Computed from the record for one period (pure numpy
and scipy; `python -m model monitor --json` prints `monitor(...)`, the Monitoring page draws it).

Everything is on one scale: with a site profile, every record's ensemble probability as shipped goes through that
profile's calibration and is decided at its operating point; without one, as shipped at the bundle's point.
Records of other bundles (or another version of this one) are left out and counted.

The rules (constants below; docs in README "Monitoring"):
- **Drift.** This period's scores (results that were assessed: no error, not `not_chest_xray`) against a reference
  sample: the site profile's cross-validated scores, else the bundle's external scores, else its internal test
  scores. PSI over the reference's deciles (PSI_BINS; an empty bin counts as 1e-4) and a two-sample KS test. Alarm
  `score_drift` when PSI ≥ PSI_ALARM (0.2: a major shift by the usual reading; < 0.1 stable) **and** KS p <
  KS_ALPHA (0.01): big enough to matter and unlikely to be chance. Needs MIN_N (30) scores on each side.
- **Guard rates.** Share of analysed results carrying each warning code. Reference: the input check's measured
  false-alarm rate on its own population (model/guard_params/metrics.json) for `not_chest_xray` and (pediatric
  bundles) `outside_intended_population`; for other codes the previous period of the same length, when it holds
  at least MIN_BASELINE results. Alarm `guard_rate_<code>` when the rate exceeds the reference by at least
  GUARD_JUMP (5 percentage points) and by more than GUARD_SE (3) binomial standard errors, with MIN_N results.
- **Performance** from results with a confirmation (the latest counts; UNSURE ones are left out): sensitivity,
  specificity, PPV, NPV and agreement (the reader's label equals the decision) with Wilson 95% CIs; AUC and ECE
  with stratified bootstrap CIs. Below MIN_CONFIRMED confirmed results, or MIN_PER_CLASS of either class, every
  number is replaced by "too few confirmed". Alarm `sensitivity_below_reference` / `specificity_below_reference`
  when the live value is below the lower 95% bound of the numbers in use (site profile, else external, else
  internal test) at the same point.
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta

import numpy as np

from model.core import metrics as M
from model.core.types import Task, WarningCode, plain
from model.store.confirmations import UNSURE
from model.store.db import iso

PSI_BINS = 10
PSI_ALARM = 0.2
PSI_FLOOR = 1e-4
KS_ALPHA = 0.01
MIN_N = 30
MIN_BASELINE = 50
GUARD_JUMP = 0.05
GUARD_SE = 3.0
MIN_CONFIRMED = 30
MIN_PER_CLASS = 10
BOOTSTRAP = 1000
TOO_FEW = "too few confirmed"
HISTOGRAM_BINS = 20  # the score histograms the page draws (not used by any rule)
DAILY_UP_TO_DAYS = 62  # longer periods count volume per ISO week

GUARD_CODES = (WarningCode.NOT_CHEST_XRAY, WarningCode.OUTSIDE_INTENDED_POPULATION)


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------
def psi(reference, current, bins: int = PSI_BINS) -> float:
    """Population stability index of `current` against `reference`, over the reference's quantile bins."""
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=len(inner) + 1) / len(reference)
    cur = np.bincount(np.searchsorted(inner, current, side="right"), minlength=len(inner) + 1) / len(current)
    ref, cur = np.clip(ref, PSI_FLOOR, None), np.clip(cur, PSI_FLOOR, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def ks_p(reference, current) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(current, float), np.asarray(reference, float)).pvalue)


def proportion(hits: int, n: int) -> dict:
    return {"value": hits / n if n else None, "ci95": M.wilson_ci(hits, n) if n else None, "n": int(n)}


def _bootstrap(y, p, statistic, boot: int) -> list[float]:
    from model.sites.profiles import bootstrap_ci

    return bootstrap_ci(y, p, statistic, n=boot)


# ---------------------------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------------------------
def active_point(bundle, site=None, operating_point: str | None = None) -> dict:
    """{"name", "threshold", "source"}: the site profile's point when one is given, else the bundle's."""
    from model.core.analysis import resolve_threshold

    threshold, name = resolve_threshold(bundle, None, operating_point, site)
    return {"name": name, "threshold": float(threshold),
            "source": f"site profile {site.name}" if site is not None else f"bundle {bundle.name}"}


def reference_sample(bundle, site=None) -> dict | None:
    """{"key", "name", "y", "score"} on the monitor's scale: the site profile's cross-validated sample, else the
    bundle's external scores, else its internal test scores (model.sites.profiles.evidence_sets); None without."""
    from model.sites.profiles import evidence_sets

    sets = evidence_sets(bundle, site)
    for key, name in (("site", "site profile {dataset} (cross-validated sample)"), ("external", "external ({dataset})"),
                      ("internal", "internal test ({dataset})")):
        if key in sets:
            return {"key": key, "name": name.format(dataset=sets[key]["dataset"]), **sets[key]}
    return None


def reference_numbers(reference: dict | None, site, point: dict) -> dict | None:
    """Sensitivity and specificity {"value", "ci95"} in use at this point: the site profile's cross-validated ones
    (at one of its points), else computed on the reference sample with Wilson CIs."""
    if reference is None:
        return None
    if reference["key"] == "site" and site is not None:
        numbers = site.data.get("validation", {}).get("points", {}).get(point["name"] or "")
        if numbers:
            return {"source": reference["name"],
                    **{rate: {"value": numbers[rate], "ci95": numbers[f"{rate}_ci95"]}
                       for rate in ("sensitivity", "specificity")}}
    counts = M.confusion(reference["y"], reference["score"], point["threshold"])
    sens = proportion(counts["tp"], counts["tp"] + counts["fn"])
    spec = proportion(counts["tn"], counts["tn"] + counts["fp"])
    return {"source": reference["name"], "sensitivity": sens, "specificity": spec}


def guard_references(bundle) -> dict:
    """{code: {"rate", "n", "source"}}: the input check's measured false-alarm rates on its own population."""
    from model.core.guard import PARAMS_DIR

    try:
        measured = json.loads((PARAMS_DIR / "metrics.json").read_text())["metrics"]
    except (OSError, ValueError, KeyError):
        return {}
    out = {}
    found = measured.get("not_chest_xray", {}).get("false_alarm_on_real_radiographs")
    if found:
        out[WarningCode.NOT_CHEST_XRAY.value] = {"rate": found["rate"], "n": found["n"],
                                                  "source": "input check, real radiographs"}
    pediatric = str((bundle.manifest or {}).get("population") or "").lower().startswith(("pediatric", "paediatric"))
    found = measured.get("population", {}).get("false_alarm_on_children")
    if pediatric and found:
        out[WarningCode.OUTSIDE_INTENDED_POPULATION.value] = {"rate": found["rate"], "n": found["n"],
                                                               "source": "input check, children's radiographs"}
    return out


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------
def _assessed(row) -> bool:
    return row["error"] is None and row["probability_raw"] is not None \
        and WarningCode.NOT_CHEST_XRAY.value not in (row["warnings"] or [])


def _label_name(row) -> str:
    if row["error"]:
        return "error"
    label = row["label"]
    if label is None:
        return "not_assessed"
    return ("+".join(label) or "none") if isinstance(label, list) else str(label)


def _volume(rows, since: datetime | None, until: datetime | None) -> dict:
    times = [r["created_at"] for r in rows]
    start, end = since or (min(times) if times else None), until or (max(times) if times else None)
    weekly = start is not None and end is not None and end - start > timedelta(days=DAILY_UP_TO_DAYS)
    key = (lambda t: "%d-W%02d" % t.isocalendar()[:2]) if weekly else (lambda t: t.date().isoformat())
    return {"by": "week" if weekly else "day", "counts": dict(sorted(Counter(key(t) for t in times).items()))}


def _guards(rows, bundle, baseline) -> tuple[dict, dict, list]:
    analysed = [r for r in rows if r["error"] is None]
    n = len(analysed)
    counts = Counter(code for r in analysed for code in set(r["warnings"] or []))
    rates = {code: counts.get(code, 0) / n if n else None for code in
             sorted(set(counts) | {c.value for c in GUARD_CODES})}
    references = guard_references(bundle)
    base = [r for r in (baseline or []) if r["error"] is None]
    if len(base) >= MIN_BASELINE:
        base_counts = Counter(code for r in base for code in set(r["warnings"] or []))
        for code in rates:
            references.setdefault(code, {"rate": base_counts.get(code, 0) / len(base), "n": len(base),
                                         "source": "previous period"})
    checks, alarms = {}, []
    for code, rate in rates.items():
        ref = references.get(code)
        if ref is None or rate is None:
            continue
        r0 = ref["rate"]
        se = np.sqrt(max(r0 * (1 - r0), 1e-12) / n)
        jump = n >= MIN_N and rate - r0 >= GUARD_JUMP and rate > r0 + GUARD_SE * se
        checks[code] = {"rate": rate, "n": n, "reference": r0, "reference_source": ref["source"], "alarm": jump}
        if jump:
            alarms.append({"code": f"guard_rate_{code}", "message": _guard_message(code, rate, r0, counts[code], n)})
    return rates, checks, alarms


def _guard_message(code: str, rate: float, r0: float, hits: int, n: int) -> str:
    what = {WarningCode.NOT_CHEST_XRAY: "were not recognised as frontal chest X-rays",
            WarningCode.OUTSIDE_INTENDED_POPULATION: "looked outside the intended population (adults?)"}
    said = what.get(code, f"carried the warning {code}")
    return (f"{hits} of {n} images ({rate:.0%}) {said}, against about {r0:.0%} expected. Check the source: which "
            "unit, ward or modality sends them (a new X-ray unit, an adult ward, a changed export)? Results for "
            "such images are not validated; route them elsewhere, or re-validate on a labelled sample from them.")


def _drift(scores, reference, label_scale: str) -> tuple[dict, list]:
    out = {"reference": reference["name"] if reference else None,
           "n_reference": len(reference["score"]) if reference else 0, "n": int(len(scores)), "scale": label_scale,
           "psi": None, "ks_p": None, "alarm": False, "rule": f"PSI >= {PSI_ALARM} and KS p < {KS_ALPHA}, "
                                                                  f"at least {MIN_N} scores each"}
    if reference is None:
        out["note"] = "no reference sample: the bundle has no score report and no site profile is in use"
        return out, []
    if len(scores) < MIN_N or len(reference["score"]) < MIN_N:
        out["note"] = f"too few scores to compare (at least {MIN_N} on each side)"
        return out, []
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    share = lambda x: (np.histogram(np.clip(x, 0, 1), edges)[0] / len(x)).round(4).tolist()
    out["histogram"] = {"edges": edges.round(4).tolist(), "period": share(scores),
                        "reference": share(reference["score"])}
    out["psi"], out["ks_p"] = psi(reference["score"], scores), ks_p(reference["score"], scores)
    out["alarm"] = out["psi"] >= PSI_ALARM and out["ks_p"] < KS_ALPHA
    if not out["alarm"]:
        return out, []
    return out, [{"code": "score_drift", "message": (
        f"The scores of this period have moved away from the reference, {reference['name']} (PSI "
        f"{out['psi']:.2f}, KS p = {out['ks_p']:.1g}). Check the source first (a new X-ray unit, other image "
        "processing, another ward or age group), then re-validate on a labelled sample from this period and "
        "refit the site profile from the record once enough results are confirmed.")}]


def _performance(rows, scores_of, classes, point, reference_numbers_, boot) -> tuple[dict, list]:
    confirmed = [r for r in rows if _assessed(r) and r["confirmed"] is not None]
    unsure = sum(1 for r in confirmed if r["confirmed"]["label"] == UNSURE)
    usable = [r for r in confirmed if r["confirmed"]["label"] in classes]
    y = np.array([r["confirmed"]["label"] == classes[-1] for r in usable], int)
    p = scores_of(usable)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    out = {"n_confirmed": len(usable), "n_unsure": unsure, "positives": positives, "negatives": negatives,
           "point": point, "minimum": {"confirmed": MIN_CONFIRMED, "per_class": MIN_PER_CLASS},
           "reference": reference_numbers_}
    names = ("sensitivity", "specificity", "ppv", "npv", "auc", "ece", "agreement")
    if len(usable) < MIN_CONFIRMED or min(positives, negatives) < MIN_PER_CLASS:
        out["status"] = TOO_FEW
        out.update({k: {"value": TOO_FEW, "ci95": None, "n": len(usable)} for k in names})
        return out, []
    out["status"] = "ok"
    decided = p >= point["threshold"]
    c = M.confusion(y, p, point["threshold"])
    out["sensitivity"] = proportion(c["tp"], c["tp"] + c["fn"])
    out["specificity"] = proportion(c["tn"], c["tn"] + c["fp"])
    out["ppv"] = proportion(c["tp"], c["tp"] + c["fp"])
    out["npv"] = proportion(c["tn"], c["tn"] + c["fn"])
    out["agreement"] = proportion(int((decided == y.astype(bool)).sum()), len(y))
    out["auc"] = {"value": M.roc_auc(y, p), "ci95": _bootstrap(y, p, M.roc_auc, boot), "n": len(y)}
    ece = lambda yy, pp: M.expected_calibration_error(yy, pp)[0]
    out["ece"] = {"value": ece(y, p), "ci95": _bootstrap(y, p, ece, boot), "n": len(y)}
    alarms = []
    for rate in ("sensitivity", "specificity"):
        ref = (reference_numbers_ or {}).get(rate)
        live = out[rate]["value"]
        if ref and ref.get("ci95") and live is not None and live < ref["ci95"][0]:
            alarms.append({"code": f"{rate}_below_reference", "message": (
                f"Live {rate} {live:.2f} (95% CI {out[rate]['ci95'][0]:.2f}–{out[rate]['ci95'][1]:.2f}, "
                f"n = {out[rate]['n']}) is below the lower bound {ref['ci95'][0]:.2f} of the {rate} in use "
                f"({reference_numbers_['source']}: {ref['value']:.2f}). Re-validate on a labelled sample, check "
                "the source for a change, and refit the site profile from the record (site fit --from-records) "
                "or choose another operating point.")})
    return out, alarms


def monitor(rows: list[dict], bundle, *, site=None, operating_point: str | None = None,
            since: datetime | None = None, until: datetime | None = None, baseline: list[dict] | None = None,
            boot: int = BOOTSTRAP) -> dict:
    """The monitoring report for `rows` (model.store.db.Store.results, each with its latest confirmation) of
    one period. `baseline`: the previous period's rows, for guard codes with no measured rate."""
    mine = [r for r in rows if r["bundle"] == bundle.name and r["bundle_version"] == bundle.version]
    out = {"n": len(mine), "period": {"since": iso(since or (min(r["created_at"] for r in mine) if mine else None)),
                                      "until": iso(until or (max(r["created_at"] for r in mine) if mine else None))},
           "bundle": {"name": bundle.name, "version": bundle.version}, "site": site.name if site else None,
           "excluded_other_bundles": len(rows) - len(mine), "volume": _volume(mine, since, until),
           "labels": dict(sorted(Counter(_label_name(r) for r in mine).items()))}
    rates, checks, alarms = _guards(mine, bundle, baseline and [r for r in baseline if r["bundle"] == bundle.name
                                                                and r["bundle_version"] == bundle.version])
    out["guards"], out["guard_checks"] = rates, checks
    if bundle.task != Task.BINARY:
        out.update(drift=None, performance=None, alarms=alarms,
                   note="Drift and live performance are computed for two-class bundles only.")
        return plain(out)
    point = active_point(bundle, site, operating_point)
    scale = f"calibrated by site profile {site.name}" if site else "as shipped"

    def scores_of(selected):
        raw = np.array([r["probability_raw"] for r in selected], float)
        return np.asarray(site.calibrate(raw) if site is not None and len(raw) else raw, float)

    assessed = [r for r in mine if _assessed(r)]
    scores = scores_of(assessed)
    out["point"] = point
    out["positive_share"] = {**proportion(int((scores >= point["threshold"]).sum()), len(scores)),
                             "threshold": point["threshold"]}
    reference = reference_sample(bundle, site)
    out["drift"], drift_alarms = _drift(scores, reference, scale)
    out["performance"], performance_alarms = _performance(mine, scores_of, list(bundle.classes), point,
                                                          reference_numbers(reference, site, point), boot)
    out["alarms"] = alarms + drift_alarms + performance_alarms
    return plain(out)


def run(store, bundle, *, site=None, operating_point=None, since=None, until=None, boot: int = BOOTSTRAP,
        now: datetime | None = None) -> dict:
    """`monitor` over the store's records of [since, until) (until: now), with the previous period of the same
    length as the baseline when `since` is given."""
    from model.store.db import utc_now

    until = until or now or utc_now()
    rows = store.results(since, until, bundle=bundle.name)
    baseline = store.results(since - (until - since), since, bundle=bundle.name) if since is not None else None
    return monitor(rows, bundle, site=site, operating_point=operating_point, since=since, until=until,
                   baseline=baseline, boot=boot)
