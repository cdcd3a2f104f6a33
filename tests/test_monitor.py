"""Monitoring (model/store/monitor.py) on a synthetic department written straight into a real store (SQLite, and
PostgreSQL on the session's server): the shipped bundle's identity and reports (no Keras), children's scores drawn
from its own external set, adults' from elsewhere. What the issue's check asks: the record count, sensitivity and
specificity equal to a direct computation, an alarm for the period that holds adult images and none for a
children-only one (against the bundle's external set and against a children's site profile), and "too few
confirmed" below the minimum."""
from datetime import datetime, timedelta

import numpy as np
import pytest

from model.core import metrics as M
from model.store import monitor as MON
from model.store.db import Store

from helpers.records import START, children, shipped_bundle, write

ADULT = "outside_intended_population"


@pytest.fixture(scope="module")
def bundle():
    return shipped_bundle()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def department(request, bundle, tmp_path_factory):
    """March: 300 children, all confirmed, 3 flagged as adults (the guard's ~2% false alarms). April: 300 more
    children and 50 adults (48 flagged), all confirmed. In SQLite, and in PostgreSQL on the session's server.
    Returns (store, facts)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('department') / 'records.sqlite3'}" if request.param == "sqlite" \
        else request.getfixturevalue("postgres").database("department")
    store = Store.open(url)
    y1, p1 = children(bundle, 300, seed=1)
    flags1 = [(ADULT,) if i in (5, 100, 200) else () for i in range(300)]
    write(store, bundle, p1, y1, warnings=flags1, start=START, sha_prefix="a")
    y2, p2 = children(bundle, 300, seed=2)
    rng = np.random.default_rng(3)
    p_adult = rng.beta(2.0, 2.0, 50)  # an adult's radiograph: the children's model is unsure, not bimodal
    y_adult = (rng.random(50) < 0.3).astype(int)
    april = START + timedelta(days=31)
    write(store, bundle, np.r_[p2, p_adult], np.r_[y2, y_adult],
          warnings=[()] * 300 + [(ADULT,) if i < 48 else () for i in range(50)], start=april,
          every=timedelta(minutes=10), sha_prefix="b")
    yield store, {"march": (y1, p1), "april": (np.r_[y2, y_adult], np.r_[p2, p_adult]), "april_start": april}
    store.close()


def test_psi_and_ks_see_a_shift_and_not_a_resample():
    rng = np.random.default_rng(0)
    reference = rng.beta(0.5, 0.5, 2000)
    assert MON.psi(reference, rng.choice(reference, 400)) < 0.05
    assert MON.psi(reference, rng.beta(2, 2, 400)) > MON.PSI_ALARM
    assert MON.ks_p(reference, rng.beta(2, 2, 400)) < MON.KS_ALPHA


def test_a_children_only_period_counts_every_result_and_raises_no_alarm(department, bundle):
    store, facts = department
    report = MON.run(store, bundle, since=START, until=facts["april_start"], boot=200)
    assert report["n"] == 300 and report["excluded_other_bundles"] == 0
    assert report["alarms"] == [], report["alarms"]
    assert report["guards"][ADULT] == pytest.approx(3 / 300)
    assert report["drift"]["reference"].startswith("external") and report["drift"]["alarm"] is False
    assert report["volume"]["by"] == "day" and sum(report["volume"]["counts"].values()) == 300

    # Sensitivity and specificity are exactly what the same scores give, decided at the bundle's default point.
    y, p = facts["march"]
    threshold = bundle.operating_point()["threshold"]
    counts = M.confusion(y, p, threshold)
    performance = report["performance"]
    assert performance["status"] == "ok" and performance["n_confirmed"] == 300
    assert performance["sensitivity"]["value"] == pytest.approx(counts["tp"] / (counts["tp"] + counts["fn"]))
    assert performance["specificity"]["value"] == pytest.approx(counts["tn"] / (counts["tn"] + counts["fp"]))
    assert performance["sensitivity"]["ci95"] == pytest.approx(M.wilson_ci(counts["tp"], counts["tp"] + counts["fn"]))
    assert performance["auc"]["value"] == pytest.approx(M.roc_auc(y, p))
    lo, hi = performance["auc"]["ci95"]
    assert lo <= performance["auc"]["value"] <= hi
    assert report["positive_share"]["value"] == pytest.approx(np.mean(p >= threshold))


def test_the_period_with_adult_images_raises_a_guard_rate_alarm(department, bundle):
    store, facts = department
    report = MON.run(store, bundle, since=facts["april_start"], until=facts["april_start"] + timedelta(days=30),
                     boot=200)
    assert report["n"] == 350
    codes = [a["code"] for a in report["alarms"]]
    assert f"guard_rate_{ADULT}" in codes, report["alarms"]
    check = report["guard_checks"][ADULT]
    assert check["rate"] == pytest.approx(48 / 350) and check["reference_source"].startswith("input check")
    message = next(a["message"] for a in report["alarms"] if a["code"] == f"guard_rate_{ADULT}")
    assert "Check the source" in message
    # the previous period of the same length is the baseline for codes the input check has no measured rate for
    assert report["labels"]["PNEUMONIA"] + report["labels"]["NORMAL"] == 350


@pytest.fixture(scope="module")
def kids(bundle):
    """A site profile fitted on 240 other children."""
    from model.sites import profiles as sites

    y, p = children(bundle, 240, seed=7)
    scored = sites.Scored(bundle.name, bundle.classes, "children", [str(i) for i in range(len(y))], y, p, [], {})
    return sites.SiteProfile(sites.fit(scored, bundle, "kids", boot=100))


def test_a_children_site_profile_is_the_reference_when_active(department, bundle, kids):
    store, facts = department
    site = kids
    calm = MON.run(store, bundle, site=site, since=START, until=facts["april_start"], boot=100)
    assert calm["drift"]["reference"].startswith("site profile kids") and calm["alarms"] == [], calm["alarms"]
    assert calm["point"]["threshold"] == pytest.approx(site.operating_point()["threshold"])
    y1, p1 = facts["march"]
    counts = M.confusion(y1, site.calibrate(p1), site.operating_point()["threshold"])
    assert calm["performance"]["sensitivity"]["value"] == pytest.approx(counts["tp"] / (counts["tp"] + counts["fn"]))
    assert calm["performance"]["reference"]["source"].startswith("site profile kids")
    busy = MON.run(store, bundle, site=site, since=facts["april_start"], boot=100)
    assert f"guard_rate_{ADULT}" in [a["code"] for a in busy["alarms"]]


def test_few_confirmations_say_too_few_confirmed_instead_of_a_number(bundle, tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    y, p = children(bundle, 80, seed=4)
    labels = [int(v) if i < 20 else None for i, v in enumerate(y)]  # 20 confirmed of 80
    write(store, bundle, p, labels)
    report = MON.run(store, bundle, until=START + timedelta(days=5), boot=100)
    performance = report["performance"]
    assert performance["status"] == MON.TOO_FEW and performance["n_confirmed"] == 20
    assert performance["sensitivity"]["value"] == "too few confirmed"
    assert not any(a["code"].endswith("below_reference") for a in report["alarms"])
    store.close()


def test_a_drop_in_sensitivity_and_a_shift_in_scores_raise_their_alarms(bundle, tmp_path):
    """A new X-ray unit: the model now misses half the pneumonias (their scores fall), which moves the score
    distribution too."""
    from model.core.metrics import sigmoid

    store = Store.open(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    y, p = children(bundle, 300, seed=5)
    rng = np.random.default_rng(6)
    missed = (y == 1) & (rng.random(len(y)) < 0.5)
    p = np.where(missed, sigmoid(rng.normal(-3, 1, len(y))), p)
    write(store, bundle, p, y)
    report = MON.run(store, bundle, until=datetime(2026, 1, 1), boot=200)
    codes = {a["code"] for a in report["alarms"]}
    assert "sensitivity_below_reference" in codes and "score_drift" in codes, report["alarms"]
    assert report["drift"]["psi"] >= MON.PSI_ALARM and report["drift"]["ks_p"] < MON.KS_ALPHA
    reference = report["performance"]["reference"]
    assert reference["source"].startswith("external")
    assert report["performance"]["sensitivity"]["value"] < reference["sensitivity"]["ci95"][0]
    store.close()
