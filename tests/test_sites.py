"""Site profiles (model.sites.profiles): reading labelled sets, refusing bad ones, cross-validation that never judges a
choice on the images it was fitted on, and profiles that refuse to load for another bundle or after an edit.

Pure-numpy tests use a stand-in bundle; the end-to-end ones use the session's tiny real bundle and drawn chest
radiographs (which the input guard accepts)."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from model.core import metrics as M
from model.core.types import Task
from model.sites import profiles as sites
from model.sites.profiles import SiteError

from helpers.images import png_bytes

CLASSES = ["NORMAL", "PNEUMONIA"]


def stand_in_bundle(name="pneumonia-kermany", version="v1", sha="a" * 64):
    points = [{"name": "balanced", "rule": "youden", "target": None, "threshold": 0.5},
              {"name": "screening", "rule": "sensitivity", "target": 0.95, "threshold": 0.3},
              {"name": "confirmatory", "rule": "specificity", "target": 0.95, "threshold": 0.8}]
    return SimpleNamespace(name=name, version=version, task=Task.BINARY, classes=CLASSES, operating_points=points,
                           manifest={"default_operating_point": "balanced"},
                           members=[SimpleNamespace(name="cnn", info={"sha256": sha})])


def scored_sample(n_neg=60, n_pos=90, shift=1.5, seed=0) -> sites.Scored:
    """A scored sample whose shipped probabilities are miscalibrated (too high) but informative."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    z = rng.normal(0, 1, len(y)) + shift * y + 1.5
    return sites.Scored("pneumonia-kermany", CLASSES, "sample", [f"f{i}" for i in range(len(y))], y, M.sigmoid(z),
                        [], {})


# --- cross-validation ------------------------------------------------------------------------------------------
def test_folds_hold_every_image_out_exactly_once_and_keep_the_class_mix():
    y = np.r_[np.zeros(37, int), np.ones(63, int)]
    fold = sites.stratified_folds(y, 5, np.random.default_rng(0))
    assert set(fold) == set(range(5))
    for j in range(5):
        held = fold == j
        assert abs(held[y == 0].sum() - 37 / 5) <= 1 and abs(held[y == 1].sum() - 63 / 5) <= 1
    # each image is in exactly one held-out fold: the folds partition the sample
    assert sum(int((fold == j).sum()) for j in range(5)) == len(y)


def test_cross_validated_numbers_are_not_flattered_by_fitting_on_the_judged_images():
    """Pure-noise scores: choosing a threshold on the same images always finds a 'good' one; cross-validation,
    which only scores held-out folds, stays at chance (averaged over ten samples to keep the test steady)."""
    balanced = lambda r: (r["sensitivity"] + r["specificity"]) / 2
    in_sample, crossed = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        y = np.r_[np.zeros(30, int), np.ones(30, int)]
        p = rng.uniform(0.05, 0.95, len(y))
        (a, b), points = sites.fit_rules(y, M.logit(p), {})
        in_sample.append(balanced(M.rates(M.confusion(y, M.sigmoid(a * M.logit(p) + b), points[0]["threshold"]))))
        cv = sites.cv_metrics(y, sites.cross_validate(y, p, {}, folds=5, repeats=3, seed=seed), boot=10)
        crossed.append(balanced(cv["points"]["balanced"]))
    assert np.mean(in_sample) > np.mean(crossed) + 0.05
    assert abs(np.mean(crossed) - 0.5) < 0.04


def test_cross_validation_fits_on_the_other_folds_only(monkeypatch):
    fitted_on = []
    original = sites.fit_rules
    monkeypatch.setattr(sites, "fit_rules", lambda y, z, t: fitted_on.append(set(np.round(z, 9))) or original(y, z, t))
    y = np.r_[np.zeros(20, int), np.ones(30, int)]
    p = np.linspace(0.1, 0.9, 50)  # every image has its own score, so the scores name the images
    cv = sites.cross_validate(y, p, {}, folds=5, repeats=2)
    z = np.round(M.logit(p), 9)
    calls = iter(fitted_on)
    for fold in cv["folds"]:
        for j in range(5):
            train = next(calls)
            assert len(train) == 40 and train.isdisjoint(z[fold == j])  # never fitted on the images it scores


def test_platt_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.uniform(size=z.size) < M.sigmoid(0.5 * z - 1.0)).astype(int)
    a, b = M.fit_platt(y, z)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.08)


def test_a_separable_sample_still_gives_finite_calibration():
    a, b = M.fit_platt(np.r_[np.zeros(10), np.ones(10)], np.r_[np.full(10, -3.0), np.full(10, 3.0)])
    assert np.isfinite([a, b]).all() and a > 0


def test_fit_recalibrates_and_reports_cross_validated_numbers_with_intervals():
    bundle, scored = stand_in_bundle(), scored_sample()
    profile = sites.fit(scored, bundle, "clinic-a", repeats=2, boot=100)
    assert profile["validation"]["ece"] < profile["as_shipped"]["ece"]  # shifted scores are pulled back
    assert [p["name"] for p in profile["operating_points"]] == ["balanced", "screening", "confirmatory"]
    t = {p["name"]: p["threshold"] for p in profile["operating_points"]}
    assert t["screening"] <= t["balanced"] <= t["confirmatory"]
    for point in profile["validation"]["points"].values():
        lo, hi = point["sensitivity_ci95"]
        assert lo <= point["sensitivity"] <= hi
    assert profile["sample"]["per_class"] == {"NORMAL": 60, "PNEUMONIA": 90}
    assert profile["bundle"] == {"name": "pneumonia-kermany", "version": "v1", "members": {"cnn": "a" * 64}}
    assert len(profile["validation"]["out_of_fold"]["probability"]) == 150


def test_fit_refuses_too_few_images_of_a_class():
    with pytest.raises(SiteError, match="at least 5 per class") as e:
        sites.fit(scored_sample(n_neg=3, n_pos=40), stand_in_bundle(), "tiny")
    assert e.value.code == "too_few"


def test_few_images_of_a_class_warn_with_the_interval_width():
    report = sites.validate(scored_sample(n_neg=12, n_pos=80), stand_in_bundle())
    assert report["warnings"]["few_images"] == 1
    [note] = report["notes"]
    assert "Only 12 NORMAL" in note and "95% CI" in note and "±" in note


# --- profiles on disk ------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    profile = sites.fit(scored_sample(), stand_in_bundle(), "clinic-a", repeats=1, boot=20)
    return sites.save(profile, tmp_path), profile


def test_a_saved_profile_loads_back_for_its_bundle(saved, tmp_path):
    path, profile = saved
    loaded = sites.load("clinic-a", stand_in_bundle(), tmp_path)
    assert loaded.data == profile
    assert loaded.calibrate(0.5) == pytest.approx(float(M.sigmoid(profile["calibration"]["b"])))
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file went away with os.replace
    assert '"probability": [' in path.read_text()  # number lists stay on one line


@pytest.mark.parametrize("other, what", [
    (dict(name="pneumonia-other"), "name"), (dict(version="v2"), "version"), (dict(sha="b" * 64), "members")])
def test_a_profile_for_another_bundle_is_refused(saved, tmp_path, other, what):
    with pytest.raises(SiteError, match=f"different {what}") as e:
        sites.load("clinic-a", stand_in_bundle(**other), tmp_path)
    assert e.value.code == "wrong_bundle"


def test_an_edited_profile_is_refused(saved, tmp_path):
    path, _ = saved
    data = json.loads(path.read_text())
    data["operating_points"][0]["threshold"] = 0.01
    path.write_text(json.dumps(data))
    with pytest.raises(SiteError, match="does not match its recorded sha256") as e:
        sites.load("clinic-a", stand_in_bundle(), tmp_path)
    assert e.value.code == "tampered"


@pytest.mark.parametrize("text", ["{not json", "[]", json.dumps({"kind": "torax-site-profile", "site": "clinic-a"})])
def test_a_malformed_profile_is_refused(tmp_path, text):
    (tmp_path / "clinic-a.json").write_text(text)
    with pytest.raises(SiteError) as e:
        sites.load("clinic-a", stand_in_bundle(), tmp_path)
    assert e.value.code == "malformed"


def test_saving_over_a_profile_needs_force(saved, tmp_path):
    path, profile = saved
    before = path.read_bytes()
    with pytest.raises(SiteError, match="already exists") as e:
        sites.save(profile, tmp_path)
    assert e.value.code == "exists" and path.read_bytes() == before
    sites.save(profile, tmp_path, force=True)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65])
def test_site_names_cannot_leave_the_sites_folder(name):
    with pytest.raises(SiteError, match="not a usable site name"):
        sites.profile_path(name)


def test_missing_profile_names_the_ones_there(saved, tmp_path):
    with pytest.raises(SiteError, match=r"available: clinic-a"):
        sites.load("clinic-b", stand_in_bundle(), tmp_path)


def test_sites_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TORAX_SITES", str(tmp_path))
    assert sites.sites_dir() == tmp_path


# --- labelled sets ---------------------------------------------------------------------------------------------
def write_set(root: Path, counts: dict, start=0) -> Path:
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.full((8, 8), start + i, np.uint8)
            (root / label / f"{label.lower()}-{start + i}.png").write_bytes(png_bytes(pixels))
    return root


def test_class_folders_are_matched_case_insensitively_and_loose_files_ignored(tmp_path):
    root = write_set(tmp_path / "sample", {"normal": 2, "Pneumonia": 3})
    (root / "README.md").write_text("about")
    (root / "manifest.csv").write_text("path,label\n")
    (root / "normal" / ".DS_Store").write_bytes(b"x")
    labelled = sites.labelled_from_path(root, CLASSES)
    assert labelled.per_class == {"NORMAL": 2, "PNEUMONIA": 3}


def test_kermanys_own_layout_labels_a_three_class_set_by_file_name(tmp_path):
    """NORMAL/ and PNEUMONIA/ as Kermany's release ships them: for a normal / bacterial / viral bundle the type comes
    from each pneumonia file's name; a name that says neither is skipped with the reason; a two-class bundle reads
    the same folders as before, and an unrelated folder is still refused."""
    root = tmp_path / "chest_xray" / "test"
    for folder, names in (("NORMAL", ["IM-0001-0001.jpeg", "NORMAL2-IM-0002-0001.jpeg"]),
                          ("PNEUMONIA", ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person2_virus_3.jpeg",
                                         "scan-7.jpeg"])):
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes(png_bytes(np.full((8, 8), 9, np.uint8)))
    three = sites.labelled_from_path(root, THREE)
    assert three.per_class == {"NORMAL": 2, "BACTERIAL": 2, "VIRAL": 1}
    assert [(s["file"], s["code"]) for s in three.skipped] == [("PNEUMONIA/scan-7.jpeg", "unknown_subtype")]
    assert sites.labelled_from_path(root, CLASSES).per_class == {"NORMAL": 2, "PNEUMONIA": 4}
    (root / "COVID").mkdir()
    (root / "COVID" / "person3_virus_4.jpeg").write_bytes(png_bytes(np.full((8, 8), 9, np.uint8)))
    with pytest.raises(SiteError, match="COVID") as e:
        sites.labelled_from_path(root, THREE)
    assert e.value.code == "unknown_class"


def test_one_class_only_is_refused_with_the_reason(tmp_path):
    with pytest.raises(SiteError, match="labelled PNEUMONIA.*every class") as e:
        sites.labelled_from_path(write_set(tmp_path, {"PNEUMONIA": 4}), CLASSES)
    assert e.value.code == "one_class"


def test_unknown_class_folders_name_the_expected_classes(tmp_path):
    with pytest.raises(SiteError, match="COVID.*classes are NORMAL, PNEUMONIA") as e:
        sites.labelled_from_path(write_set(tmp_path, {"NORMAL": 2, "PNEUMONIA": 2, "COVID": 1}), CLASSES)
    assert e.value.code == "unknown_class"


def test_a_csv_labels_files_relative_to_itself(tmp_path):
    write_set(tmp_path / "img", {"a": 2})
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nimg/a/a-0.png,normal\nimg/a/a-1.png,PNEUMONIA\nimg/a/gone.png,NORMAL\n")
    labelled = sites.labelled_from_path(csv, CLASSES)
    assert labelled.per_class == {"NORMAL": 1, "PNEUMONIA": 1}
    assert [s["code"] for s in labelled.skipped] == ["missing_file"]
    csv.write_text("path,label\nimg/a/a-0.png,cat\nimg/a/a-1.png,PNEUMONIA\n")
    with pytest.raises(SiteError, match="cat.*NORMAL, PNEUMONIA"):
        sites.labelled_from_path(csv, CLASSES)
    csv.write_text("file,class\nimg/a/a-0.png,NORMAL\n")
    with pytest.raises(SiteError, match="'path' and 'label'"):
        sites.labelled_from_path(csv, CLASSES)


def zip_of(entries: dict, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_of_class_folders_in_a_wrapping_folder_is_read():
    data = zip_of({"site/NORMAL/a.png": b"1", "site/PNEUMONIA/b.png": b"2", "site/README.md": b"x",
                   "__MACOSX/site/NORMAL/._a.png": b"junk"})
    labelled = sites.labelled_from_zip(data, CLASSES)
    assert labelled.per_class == {"NORMAL": 1, "PNEUMONIA": 1}
    assert [i.read() for i in labelled.items] == [b"1", b"2"]


def test_a_zip_of_images_and_a_csv_is_read():
    data = zip_of({"labels.csv": b"path,label\na.png,NORMAL\nb.png,PNEUMONIA\n", "a.png": b"1", "b.png": b"2"})
    assert sites.labelled_from_zip(data, CLASSES).per_class == {"NORMAL": 1, "PNEUMONIA": 1}


@pytest.mark.parametrize("name", ["../NORMAL/a.png", "/etc/NORMAL/a.png", "NORMAL/../../a.png", "C:/NORMAL/a.png",
                                  "NORMAL\\..\\a.png"])
def test_path_traversal_in_a_zip_is_refused(name):
    with pytest.raises(SiteError, match="points outside the archive") as e:
        sites.labelled_from_zip(zip_of({name: b"1", "PNEUMONIA/b.png": b"2"}), CLASSES)
    assert e.value.code == "unsafe_zip"


def test_zip_bombs_and_oversized_zips_are_refused():
    bomb = zip_of({"NORMAL/a.png": b"\0" * (20 << 20), "PNEUMONIA/b.png": b"2"})
    assert len(bomb) < 100_000
    with pytest.raises(SiteError, match="ZIP bomb"):
        sites.labelled_from_zip(bomb, CLASSES)
    with pytest.raises(SiteError, match="expand to .* MiB") as e:
        sites.labelled_from_zip(bomb, CLASSES, max_bytes=1 << 20)
    assert e.value.code == "zip_too_large"
    many = zip_of({f"NORMAL/{i}.png": b"1" for i in range(30)})
    with pytest.raises(SiteError, match="holds 30 entries"):
        sites.labelled_from_zip(many, CLASSES, max_members=20)
    with pytest.raises(SiteError, match="not a ZIP"):
        sites.labelled_from_zip(b"PK\3\4 not really", CLASSES)


def test_uploaded_files_plus_a_csv():
    labelled = sites.labelled_from_uploads([("a.png", b"1"), ("b.png", b"2"), ("extra.png", b"3")],
                                           b"path,label\na.png,normal\nb.png,pneumonia\n", CLASSES)
    assert labelled.per_class == {"NORMAL": 1, "PNEUMONIA": 1}
    assert [s["code"] for s in labelled.skipped] == ["not_in_csv"]


# --- trust (issue 23, item 6) and options (item 7) ------------------------------------------------------------------
def forge(path: Path) -> None:
    """What the review did: every threshold to 1.0 (everything NORMAL), and the sha256 recomputed."""
    data = json.loads(path.read_text())
    for point in data["operating_points"]:
        point["threshold"] = 1.0
    data["sha256"] = sites.content_sha256(data)
    path.write_text(json.dumps(data))


def keypair(folder: Path, name: str = "k") -> tuple[Path, Path]:
    from training.export import new_signing_key

    new_signing_key(folder / f"{name}.pem", folder / f"{name}.pub.pem")
    return folder / f"{name}.pem", folder / f"{name}.pub.pem"


def test_with_trusted_keys_only_a_signed_profile_is_used(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.mkdir()
    private, public = keypair(keys)
    stranger, _ = keypair(keys, "stranger")
    folder = tmp_path / "sites"
    profile = sites.fit(scored_sample(), stand_in_bundle(), "clinic-a", repeats=1, boot=20)
    sites.save(sites.sign(profile, private), folder)
    sites.save({**profile, "site": "clinic-b", "sha256": sites.content_sha256({**profile, "site": "clinic-b"})},
               folder)  # unsigned
    sites.save(sites.sign({**profile, "site": "clinic-c", "sha256": sites.content_sha256({**profile,
                                                                                          "site": "clinic-c"})},
                          stranger), folder)
    monkeypatch.delenv("TORAX_TRUSTED_KEYS", raising=False)
    forge(folder / "clinic-b.json")
    assert sites.load("clinic-b", stand_in_bundle(), folder)  # without keys: as trustworthy as the folder

    monkeypatch.setenv("TORAX_TRUSTED_KEYS", str(public))
    assert sites.load("clinic-a", stand_in_bundle(), folder).data["signature"]
    for name, code in (("clinic-b", "unsigned"), ("clinic-c", "bad_signature")):
        with pytest.raises(SiteError) as e:
            sites.load(name, stand_in_bundle(), folder)
        assert e.value.code == code and "refused" in e.value.message
    forge(folder / "clinic-a.json")
    with pytest.raises(SiteError) as e:
        sites.load("clinic-a", stand_in_bundle(), folder)
    assert e.value.code == "bad_signature"


def test_the_sites_folder_and_profiles_are_private(tmp_path):
    import stat

    folder = tmp_path / "state" / "sites"
    assert sites.sites_writable(folder)
    path = sites.save(sites.fit(scored_sample(), stand_in_bundle(), "clinic-a", repeats=1, boot=20), folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("options", [dict(folds=0), dict(folds=1), dict(folds=-2), dict(repeats=0),
                                     dict(seed=-1)])
def test_fit_refuses_options_that_would_leave_numbers_undefined(options):
    with pytest.raises(SiteError) as e:
        sites.fit(scored_sample(), stand_in_bundle(), "clinic-a", boot=20, **options)
    assert e.value.code == "bad_option" and next(iter(options)) in e.value.message


# --- three classes (normal / bacterial / viral): vector scaling ------------------------------------------------
THREE = ["NORMAL", "BACTERIAL", "VIRAL"]


def three_class_bundle(name="pneumonia-type-kermany", version="v1"):
    return SimpleNamespace(name=name, version=version, task=Task.MULTICLASS, classes=THREE, operating_points=[],
                           manifest={"default_operating_point": None},
                           members=[SimpleNamespace(name="cnn", info={"sha256": "b" * 64})])


def three_class_sample(n=(60, 70, 40), seed=0) -> sites.Scored:
    """Informative class probabilities that over-call BACTERIAL at this site, as the later collection's do: a
    prior shift that only a bias per class (not a temperature) can undo."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n)
    logits = rng.normal(0, 1, (len(y), 3)) + 2.0 * np.eye(3)[y] + np.array([0.0, 1.6, 0.3])
    return sites.Scored("pneumonia-type-kermany", THREE, "sample", [f"f{i}" for i in range(len(y))], y,
                        M.softmax(logits), [], {})


def test_vector_scaling_recovers_a_known_miscalibration():
    rng = np.random.default_rng(1)
    logp = np.log(M.softmax(rng.normal(0, 2, (20000, 3))))
    truth = M.softmax(0.6 * logp + np.array([0.0, -1.0, 0.5]))
    y = (rng.uniform(size=(len(truth), 1)) > np.cumsum(truth, axis=1)).sum(axis=1)
    a, b = M.fit_vector_scaling(y, logp)
    assert a == pytest.approx(0.6, abs=0.03) and b[0] == 0.0
    assert b[1] == pytest.approx(-1.0, abs=0.06) and b[2] == pytest.approx(0.5, abs=0.06)
    # a separable sample gives finite numbers, and a ranking that is backwards is never turned round
    separable = np.log(np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]] * 4))
    y = np.tile(np.arange(3), 4)
    assert np.isfinite([M.fit_vector_scaling(y, separable)[0]]).all()
    assert M.fit_vector_scaling((y + 1) % 3, separable)[0] >= M.MIN_PLATT_SLOPE


def test_a_three_class_profile_undoes_a_site_shift_and_is_judged_by_cross_validation(tmp_path):
    bundle, scored = three_class_bundle(), three_class_sample()
    profile = sites.fit(scored, bundle, "later-collection", repeats=2, boot=100)
    shipped, cv = profile["as_shipped"], profile["validation"]
    assert profile["task"] == "multiclass" and profile["operating_points"] == []
    assert cv["accuracy"] > shipped["accuracy"] + 0.05 and cv["ece"] < shipped["ece"]
    assert cv["recall"]["NORMAL"] > shipped["recall"]["NORMAL"]  # the over-called class gives back its normals
    for key in ("accuracy", "macro_auc", "ece"):
        lo, hi = cv[f"{key}_ci95"]
        assert lo <= cv[key] <= hi
    assert np.asarray(cv["out_of_fold"]["probability"]).shape == (170, 3)
    assert profile["calibration"]["b"][0] == 0.0 and len(profile["calibration"]["b"]) == 3
    summary = "\n".join(sites.summary_lines(profile))
    assert f"accuracy {shipped['accuracy']:.3f}" in summary and f"accuracy {cv['accuracy']:.3f}" in summary

    site = sites.load("later-collection", bundle, sites.save(profile, tmp_path).parent)
    p = scored.p[:5]
    calibrated = site.calibrate(p)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    np.testing.assert_allclose(site.uncalibrate(calibrated), p, rtol=1e-6)
    from model.core.ensemble import Prediction

    prediction = Prediction(THREE, Task.MULTICLASS, dict(zip(THREE, p[0])), {"cnn": dict(zip(THREE, p[0]))})
    local = site.apply(prediction)
    assert local.probabilities == pytest.approx(dict(zip(THREE, calibrated[0])))
    assert local.members["cnn"] == pytest.approx(local.probabilities)

    # a result analysed as shipped (Diagnose, Worklist) is recalibrated without inference and decided by its top class
    from model.core.analysis import apply_site, decide
    from model.core.types import Result

    shown = Result("x.png", bundle.name, Task.MULTICLASS, probabilities=dict(zip(THREE, p[1])),
                   members={"cnn": dict(zip(THREE, p[1]))})
    local = decide(apply_site(shown, site), bundle, None, site)
    assert local.site == "later-collection" and local.probabilities == pytest.approx(dict(zip(THREE, calibrated[1])))
    assert local.label == THREE[int(np.argmax(calibrated[1]))] and local.threshold is None

    report = sites.validate(scored, bundle, site)
    assert report["task"] == "multiclass" and report["site"] == "later-collection"
    assert any("optimistic" in note for note in report["notes"])  # validated on the images it was fitted on
    assert np.sum(report["confusion"]) == scored.n


def test_three_class_cross_validation_fits_on_the_other_folds_only(monkeypatch):
    fitted_on = []
    original = M.fit_vector_scaling
    monkeypatch.setattr(M, "fit_vector_scaling",
                        lambda y, logp: fitted_on.append({tuple(r) for r in np.round(logp, 9)}) or original(y, logp))
    scored = three_class_sample(n=(20, 25, 15))
    cv = sites.cross_validate_multiclass(scored.y, scored.p, folds=5, repeats=2)
    rows = [tuple(r) for r in np.round(np.log(np.clip(scored.p, 1e-7, 1)), 9)]
    k = 0
    for fold in cv["folds"]:
        for j in range(cv["k"]):
            held_out = {rows[i] for i in np.flatnonzero(fold == j)}
            assert not held_out & fitted_on[k]
            k += 1
    assert k == len(fitted_on) == 10


def test_a_three_class_profile_is_refused_for_another_kind_of_bundle_or_with_a_bad_bias(tmp_path):
    profile = sites.fit(three_class_sample(), three_class_bundle(), "later-collection", repeats=1, boot=20)
    sites.save(profile, tmp_path)
    binary_named_alike = SimpleNamespace(**{**vars(stand_in_bundle(name="pneumonia-type-kermany"))})
    with pytest.raises(SiteError, match="multiclass profile") as e:
        sites.load("later-collection", binary_named_alike, tmp_path)
    assert e.value.code == "wrong_bundle"
    broken = {**profile, "calibration": {**profile["calibration"], "b": [0.0, 1.0]}}
    broken["sha256"] = sites.content_sha256(broken)
    with pytest.raises(SiteError, match="not usable numbers"):
        sites.verify(broken, three_class_bundle())
    multilabel = SimpleNamespace(**{**vars(three_class_bundle()), "task": Task.MULTILABEL})
    with pytest.raises(SiteError, match="one class") as e:
        sites.fit(three_class_sample(), multilabel, "x")
    assert e.value.code == "unsupported_task"
