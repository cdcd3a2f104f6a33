"""`archive score --engine ray` on one local Ray cluster shared by the session (conftest's `ray_cluster`, 2 CPUs):
the same table as the local engine, also when a worker actor dies mid-run, and a second run adds nothing. Skipped
where Ray is not installed (requirements-scale.txt)."""
from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from model.channels import archive

from helpers.archives import hand_set_bundles, image_folder
from helpers.cli import run_cli

pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-scale.txt)")

COMPARED = ("source", "sha256", "label", "finding", "threshold", "warnings", "error_code", "size_bytes")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_cluster):
    from model.core.bundle import load_bundle

    root = tmp_path_factory.mktemp("ray-archive")
    bundles = hand_set_bundles(root / "bundles")
    image_folder(root / "archive")
    bundle = load_bundle(bundles / "pneumonia-kermany")
    local = archive.Output(root / "local.parquet")
    local.check_writable()
    archive.score(archive.list_folder(root / "archive"), local, bundle, say=lambda line: None)
    return root, bundles, bundle, pq.read_table(local.path).to_pylist()


def test_ray_gives_the_local_engines_table_even_when_a_worker_is_killed_and_a_second_run_adds_nothing(setup):
    root, bundles, bundle, local_rows = setup
    marker = root / "a-worker-died"

    class DiesOnce(archive.Scorer):
        """The first batch any actor of the pool gets kills its process (as an OOM kill would); Ray Data restarts
        the actor and retries the batch."""

        def __call__(self, batch):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return super().__call__(batch)
            os._exit(1)

    out = archive.Output(root / "ray.parquet")
    out.check_writable()
    summary = archive.score(archive.list_folder(root / "archive"), out, bundle, engine="ray", batch_size=2,
                            ray_options=archive.RayOptions(workers=2, scorer_class=DiesOnce), say=lambda line: None)
    assert marker.exists()  # an actor did die
    rows = pq.read_table(out.path).to_pylist()
    assert summary.written == len(rows) == len(local_rows)  # nothing missing, nothing twice
    assert len({r["source"] for r in rows}) == len(rows)
    for mine, theirs in zip(rows, local_rows):
        assert {k: mine[k] for k in COMPARED} == {k: theirs[k] for k in COMPARED}
        for key in ("probability", "probability_raw", "spread"):
            assert (mine[key] is None) == (theirs[key] is None)
            if mine[key] is not None:
                assert mine[key] == pytest.approx(theirs[key], abs=1e-5)

    again = run_cli(["archive", "score", root / "archive", "--out", out.path, "--engine", "ray", "--workers", "1"],
                    bundles)
    assert again.returncode == 0, again.stderr
    assert f"{len(rows)} already done, 0 scored, 0 error rows" in again.stdout
    assert pq.read_table(out.path).to_pylist() == rows


def test_more_workers_than_the_cluster_has_cpus_is_refused(setup):
    root, bundles, _, _ = setup
    run = run_cli(["archive", "score", root / "archive", "--out", root / "more.parquet", "--engine", "ray",
                   "--workers", "3"], bundles)
    assert run.returncode == 2 and "more than the 2 CPUs" in run.stderr
