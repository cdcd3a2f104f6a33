"""model.evidence: pages lead with the most external evidence, and each comparison sentence is true of the numbers
of its own set (issue 19, part 2)."""
import numpy as np
import pytest

from model.outputs.evidence import compare_with_members, evidence


class Bundle:
    """The few parts of model.core.bundle.Bundle that model.evidence reads."""

    def __init__(self, reports: dict, threshold: float = 0.5):
        self.reports, self.manifest = reports, {"evaluation": {"auc_ci95": [0.9, 1.0],
                                                               "external": {"auc_ci95": [0.8, 0.9]}}}
        self.threshold = threshold

    def read_report(self, name):
        return self.reports.get(name)

    def operating_point(self, name=None):
        return {"name": "balanced", "threshold": self.threshold}


def scores(y, ensemble, members, dataset):
    return {"task": "binary", "dataset": dataset, "y": [[v] for v in y], "ensemble": [[v] for v in ensemble],
            "members": {k: [[v] for v in p] for k, p in members.items()}}


Y = np.array([0, 0, 0, 1, 1, 1])
PERFECT = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
ONE_SWAP = [0.1, 0.2, 0.75, 0.7, 0.8, 0.9]   # one normal scored above one pneumonia: AUC 8/9


def test_ties_at_the_printed_precision_are_not_wins():
    assert compare_with_members(Y, np.array(PERFECT), {"a": np.array(PERFECT)})["verdict"] == "tie"
    assert compare_with_members(Y, np.array(ONE_SWAP), {"a": np.array(PERFECT)})["verdict"] == "worse"
    verdict = compare_with_members(Y, np.array(PERFECT), {"a": np.array(ONE_SWAP), "b": np.array(ONE_SWAP)})
    assert verdict["verdict"] == "better" and verdict["best_auc"] == pytest.approx(8 / 9)
    assert compare_with_members(Y, np.array(PERFECT), {}) is None


def test_external_evidence_leads_and_each_set_has_its_own_verdict():
    bundle = Bundle({"scores": scores(Y, PERFECT, {"resnet": PERFECT, "cnn": ONE_SWAP}, "internal-test"),
                     "scores-external": scores(Y, ONE_SWAP, {"resnet": PERFECT, "cnn": ONE_SWAP}, "site-b")})
    items = evidence(bundle, threshold=0.72)
    assert [i["kind"] for i in items] == ["external", "internal"]
    external, internal = items
    assert external["dataset"] == "site-b" and external["summary"]["auc_ci95"] == [0.8, 0.9]
    # at 0.72 the swapped normal (0.75) is called positive and the pneumonia at 0.70 is missed
    assert external["summary"]["specificity"] == pytest.approx(2 / 3)
    assert external["summary"]["sensitivity"] == pytest.approx(2 / 3)
    assert internal["summary"]["specificity"] == 1.0
    assert external["comparison"]["verdict"] == "worse" and external["comparison"]["best"] == "resnet"
    assert internal["comparison"]["verdict"] == "tie"


def test_without_external_scores_the_internal_split_leads():
    bundle = Bundle({"scores": scores(Y, PERFECT, {"cnn": PERFECT}, "internal-test")}, threshold=0.5)
    assert [i["kind"] for i in evidence(bundle)] == ["internal"]
