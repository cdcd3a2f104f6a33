"""`python -m model site {fit,validate,list}`: check a bundle on a site's own labelled images, and fit a site
profile (recalibration + operating points, judged by cross-validation) from them, or from the record's confirmed
results (`site fit --from-records`, model/store/sample.py). See model/sites/profiles.py."""
from __future__ import annotations

import json
import sys

from model.channels.record_cli import iso_time
from model.outputs.safe_text import log_safe
from model.sites import profiles as sites


def add_cli(sub):
    site = sub.add_parser("site", help="check the model on your own labelled images; fit a site profile")
    commands = site.add_subparsers(dest="site_command", required=True)
    labelled_help = ("a folder of class-named subfolders (other files ignored; names not case-sensitive), a CSV "
                     "with path,label columns, or a ZIP of either")
    fit = commands.add_parser("fit", help="fit and save a site profile from a labelled sample, or from the record's "
                                          "confirmed results (--from-records)")
    fit.add_argument("labelled", nargs="?", default=None, help=labelled_help)
    fit.add_argument("--from-records", action="store_true",
                     help="fit on the confirmed results in the record (python -m model record) instead of images")
    fit.add_argument("--since", type=iso_time, default=None, help="with --from-records: results from (ISO 8601)")
    fit.add_argument("--until", type=iso_time, default=None, help="with --from-records: results before (ISO 8601)")
    fit.add_argument("--name", required=True, help="site name (letters, digits, '.', '_', '-')")
    fit.add_argument("--bundle", default=None)
    fit.add_argument("--force", action="store_true", help="replace an existing profile of the same name")
    fit.add_argument("--folds", type=int, default=sites.FOLDS)
    fit.add_argument("--repeats", type=int, default=sites.REPEATS)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--sign-key", default=None,
                     help="Ed25519 private key (PEM, from `python -m training keygen`) to sign the profile with: "
                          "servers that set TORAX_TRUSTED_KEYS use only signed profiles")
    fit.add_argument("--json", action="store_true", help="print the saved profile instead of a summary")
    validate = commands.add_parser("validate", help="AUC, ECE and the operating points on a labelled sample")
    validate.add_argument("labelled", help=labelled_help)
    validate.add_argument("--bundle", default=None)
    validate.add_argument("--site", default=None, help="apply this site profile's calibration and thresholds")
    validate.add_argument("--json", action="store_true")
    listing = commands.add_parser("list", help="the site profiles in the sites folder ($TORAX_SITES)")
    listing.add_argument("--bundle", default=None)
    listing.add_argument("--json", action="store_true")


def _bundle(name: str | None, models: bool = True):
    from model.core.bundle import NoBundle, load_chosen

    try:
        return load_chosen(name, warn=lambda m: print(f"warning: {m}", file=sys.stderr), models=models)[1]
    except NoBundle as e:
        raise SystemExit(f"error: {e}") from None


def _progress(done: int, total: int):
    if sys.stderr.isatty() and done % 25 == 0:
        print(f"\r{done}/{total} images", end="", file=sys.stderr, flush=True)


def scored_sample(path: str, bundle) -> sites.Scored:
    from model.core.ensemble import Ensemble
    from model.core.guard import for_bundle

    labelled = sites.labelled_from_path(path, bundle.classes)
    return sites.score(labelled, Ensemble(bundle), guard=for_bundle(bundle), progress=_progress)


def records_sample(bundle, since=None, until=None):
    """(Scored, range) from the record's confirmed results; the record's own faults as SiteError."""
    from model.store.db import StoreError
    from model.store.recorder import recorder
    from model.store.sample import records_sample as sample

    try:
        return sample(recorder().store(), bundle, since, until)
    except StoreError as e:
        raise sites.SiteError("record_unavailable", e.message) from None


def cli(args) -> int:
    try:
        if args.site_command == "fit":  # before loading anything, so a bad number costs nothing and writes nothing
            sites.check_options(args.folds, args.repeats, args.seed)
        return {"fit": _fit, "validate": _validate, "list": _list}[args.site_command](args)
    except sites.SiteError as e:
        print(f"error: {log_safe(e.message, 4000)}", file=sys.stderr)  # names in it can't start a line of their own
        return 2


def _fit(args) -> int:
    if bool(args.labelled) == bool(args.from_records):
        raise sites.SiteError("bad_option", "Give either a labelled sample or --from-records (not both).")
    if (args.since or args.until) and not args.from_records:
        raise sites.SiteError("bad_option", "--since and --until go with --from-records.")
    bundle = _bundle(args.bundle, models=not args.from_records)  # a fit on the record runs no model
    sites.check_name(args.name)
    path = sites.profile_path(args.name)
    if path.exists() and not args.force:  # say so before minutes of scoring, not after
        raise sites.SiteError("exists", f"A site profile named '{args.name}' already exists ({path}). Use --force "
                                        "to replace it.")
    if args.sign_key:
        sites.sign({}, args.sign_key)  # an unreadable key is said before minutes of scoring
    span = None
    if args.from_records:
        scored, span = records_sample(bundle, args.since, args.until)
    else:
        scored = scored_sample(args.labelled, bundle)
    profile = sites.fit(scored, bundle, args.name, folds=args.folds, repeats=args.repeats, seed=args.seed,
                        records=span)
    if args.sign_key:
        profile = sites.sign(profile, args.sign_key)
    path = sites.save(profile, force=args.force)
    if args.json:
        print(json.dumps(profile))
    else:
        print("\n".join(sites.summary_lines(profile, path)))
    return 0


def _validate(args) -> int:
    bundle = _bundle(args.bundle)
    site = sites.load(args.site, bundle) if args.site else None
    report = sites.validate(scored_sample(args.labelled, bundle), bundle, site)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{bundle.name}{' with site profile ' + site.name if site else ' as shipped'}: {report['n']} images "
          f"({', '.join(f'{c} {n}' for c, n in report['per_class'].items())})")
    ci = lambda pair: f"95% CI {pair[0]:.3f}–{pair[1]:.3f}"  # noqa: E731
    if report.get("task") == "multiclass":
        print(f"accuracy {report['accuracy']:.3f} ({ci(report['accuracy_ci95'])}), macro AUC "
              f"{report['macro_auc']:.3f} ({ci(report['macro_auc_ci95'])}), ECE {report['ece']:.3f} "
              "(the most probable class decides)")
        for c, r in report["recall"].items():
            print(f"  {c:<12} recall {r:.3f} ({ci(report['recall_ci95'][c])}), AUC {report['auc'][c]:.3f}")
        print("confusion (rows: true, columns: predicted " + ", ".join(report["classes"]) + "): "
              + "; ".join(" ".join(str(n) for n in row) for row in report["confusion"]))
    else:
        print(f"AUC {report['auc']:.3f} ({ci(report['auc_ci95'])}), ECE {report['ece']:.3f}")
    num = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731  (a PPV with no positive call is undefined)
    for name, p in report.get("points", {}).items():
        print(f"  {name:<12} threshold {num(p['threshold'])}: sensitivity {num(p['sensitivity'])}, specificity "
              f"{num(p['specificity'])}, PPV {num(p['ppv'])}, NPV {num(p['npv'])}, accuracy {num(p['accuracy'])}")
    if report["warnings"]:
        print("warnings: " + ", ".join(f"{k} ×{n}" for k, n in report["warnings"].items()))
    for s in report["skipped"]:
        print(f"  skipped {log_safe(s['file'], 1000)}: {s['code']}")
    for note in report["notes"]:
        print(f"note: {note}")
    return 0


def _list(args) -> int:
    bundle = _bundle(args.bundle) if args.bundle else None
    found = sites.list_profiles(bundle=bundle)
    if args.json:
        print(json.dumps({"folder": str(sites.sites_dir()), "profiles": found}))
        return 0
    print(f"site profiles in {sites.sites_dir()}:" if found else f"no site profiles in {sites.sites_dir()}")
    for p in found:
        print(f"  {p['name']}" + ("" if p["ok"] else f" (refused: {p['message']})"))
    return 0
