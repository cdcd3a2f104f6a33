"""Command line for producing model bundles: `python -m training --help`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.core.types import TrainingTask


def _target_options(parser):
    parser.add_argument("--screening-sensitivity", type=float, default=0.95,
                        help="screening point: the highest threshold whose val sensitivity reaches this")
    parser.add_argument("--confirmatory-specificity", type=float, default=0.95,
                        help="confirmatory point: the lowest threshold whose val specificity reaches this")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="split by patient and train the ensemble members into a run folder")
    t.add_argument("--data", required=True, help="folder with manifest.csv, or the public chest_xray/ layout")
    t.add_argument("--out", required=True, help="run folder to create (config, split, members, history)")
    t.add_argument("--task", choices=[t.value for t in TrainingTask], default=TrainingTask.BINARY.value,
                   help="multitask: one network with a pneumonia head and a normal/bacterial/viral head; "
                        "`heads` then cuts its run into a binary and a multiclass run")
    t.add_argument("--members", default="cnn,resnet,mobilenetv2",
                   help="comma-separated architectures: cnn, resnet, mobilenetv2, mobilenetv3s, and the ImageNet "
                        "starts mobilenetv2_imagenet, xception_imagenet (after `backbones fetch`); ARCH@SEED trains "
                        "that architecture with its own seed for weights and augmentation, on the run's split")
    t.add_argument("--size", type=int, default=224, help="square input size in pixels")
    t.add_argument("--epochs", type=int, default=30, help="length of the cosine schedule")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate after the one-epoch warm-up")
    t.add_argument("--patience", type=int, default=10, help="early stopping patience on val AUC (epochs)")
    t.add_argument("--minutes-per-member", type=float, default=60.0, help="wall-clock budget per member")
    t.add_argument("--seed", type=int, default=42, help="seed for the split, and for weights and augmentation of "
                                                             "members without their own @SEED")
    t.add_argument("--cache", default="cache", help="folder for the decoded uint8 image cache ('' for none)")
    t.add_argument("--weights", action="append", default=[], metavar="ARCH=FILE",
                   help="local weights file for a member (e.g. mobilenetv2=imagenet_035.h5)")
    t.add_argument("--one-per-patient", action="store_true", help="keep one image per patient and subtype")
    t.add_argument("--keep-official-test", action="store_true",
                   help="public layout: use the release's own test folder as the test split")
    t.add_argument("--steps", type=int, default=None, help="steps per epoch (smoke tests only)")
    t.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="blend each training batch with a shuffled copy of itself, weight ~ Beta(ALPHA, ALPHA) "
                        "(0: off; 0.2 is usual)")

    h = sub.add_parser("heads", help="cut a multitask run into <run>-binary and <run>-multiclass runs")
    h.add_argument("--run", required=True, help="multitask run folder written by `train --task multitask`")

    e = sub.add_parser("evaluate", help="calibrate and choose operating points on val; score the test split once")
    e.add_argument("--run", required=True, help="run folder written by `train`")
    e.add_argument("--external", default=None,
                   help="labelled folder from another collection, scored once at the val-chosen settings")

    for p in (e,):
        _target_options(p)
    x = sub.add_parser("export", help="write a model bundle (manifest, members, reports) from an evaluated run")
    x.add_argument("--run", required=True)
    x.add_argument("--bundle", required=True, help="bundle folder, e.g. model/bundles/pneumonia-kermany")
    x.add_argument("--title", default=None)
    x.add_argument("--research-use-only", action="store_true",
                   help="label the bundle research use only (e.g. a small training set)")
    x.add_argument("--population", default=None,
                   help='who the training images show, e.g. "pediatric, 1-5 years" (the app warns outside it)')

    a = sub.add_parser("all", help="train, evaluate and export in one go (same options as train, plus --bundle)")
    for action in t._actions[1:]:
        a._add_action(action)
    _target_options(a)
    a.add_argument("--bundle", required=True)
    a.add_argument("--title", default=None)
    a.add_argument("--population", default=None)
    a.add_argument("--research-use-only", action="store_true")

    c = sub.add_parser("cam-audit", help="share of a bundle's Grad-CAM on the image frame (outer 10%%)")
    c.add_argument("--bundle", required=True, help="bundle folder")
    c.add_argument("--data", required=True, help="labelled folder (manifest.csv, class folders or chest_xray/)")
    c.add_argument("--n", type=int, default=60, help="how many PNEUMONIA images, first by file name")

    b = sub.add_parser("bench", help="images/s per architecture: data pipeline alone vs a training step")
    b.add_argument("--size", type=int, default=160)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--steps", type=int, default=5)

    g = sub.add_parser("guard", help="train and measure the input check (is it a chest X-ray? child or adult?)")
    g.add_argument("--kermany", required=True, help="pediatric radiographs: folder with manifest.csv")
    g.add_argument("--nih", required=True, help="adult radiographs: folder with labels.csv")
    g.add_argument("--out", default="model/guard_params", help="folder for guard.npz and metrics.json")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--negatives-per-family", type=int, default=400)
    g.add_argument("--no-loo", action="store_true", help="skip the leave-one-family-out measurement")

    gp = sub.add_parser("guard-population", help="refit the child-or-adult check with a new site's children "
                                                  "(cross-validated there); the radiograph check is kept")
    gp.add_argument("--kermany", required=True)
    gp.add_argument("--nih", required=True)
    gp.add_argument("--site", required=True, help="labelled folder of the site's children (e.g. kermany_external)")
    gp.add_argument("--out", default="model/guard_params", help="folder with guard.npz and metrics.json to update")
    gp.add_argument("--seed", type=int, default=0)
    gp.add_argument("--folds", type=int, default=5)

    sg = sub.add_parser("sign", help="sign a bundle's manifest (Ed25519) for servers that set TORAX_TRUSTED_KEYS")
    sg.add_argument("--bundle", required=True, help="bundle folder")
    sg.add_argument("--key", required=True, help="Ed25519 private key, PEM (e.g. from `keygen`)")
    kg = sub.add_parser("keygen", help="write a new Ed25519 signing key pair (PEM)")
    kg.add_argument("--private", required=True, help="private key file to write (keep off serving machines)")
    kg.add_argument("--public", required=True, help="public key file to write (list it in TORAX_TRUSTED_KEYS)")

    ss = sub.add_parser("size-study", help="one member at several input sizes: AUC, accuracy, latency, parameters")
    ss.add_argument("--run", action="append", required=True, metavar="SIZE=RUN",
                    help="an evaluated single-member binary run per input size")
    ss.add_argument("--three-class", action="append", default=[], metavar="SIZE=RUN",
                    help="the same member's evaluated three-class run at that size (optional, repeatable)")
    ss.add_argument("--out", required=True, help="JSON file to write (put it in the run as input-size.json)")

    hc = sub.add_parser("heads-compare", help="three-way softmax vs pneumonia-first two-stage decision, on val")
    hc.add_argument("--binary-run", required=True)
    hc.add_argument("--multiclass-run", required=True)

    pr = sub.add_parser("probe", help="linear heads on frozen features (an ImageNet backbone, or a bundle's members), "
                                      "normal vs pneumonia and bacterial vs viral, compared on val")
    pr.add_argument("--run", required=True, help="a run whose patient split (split.csv) and input size are used")
    pr.add_argument("--data", required=True, help="the dataset folder the run was trained on")
    source = pr.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", choices=["xception_imagenet", "mobilenet_v2_nsfwjs"])
    source.add_argument("--bundle", help="bundle folder: its members' pooled features, concatenated")
    pr.add_argument("--backbones-dir", default="backbones")
    pr.add_argument("--cache", help="decoded-image cache folder (as train's --cache)")
    pr.add_argument("--out", required=True, help="JSON file to write")

    am = sub.add_parser("add-members", help="add an existing bundle's members to a run on the same patient split "
                                            "(then evaluate and export the larger ensemble)")
    am.add_argument("--run", required=True)
    am.add_argument("--bundle", required=True, help="bundle folder whose members join the run")
    am.add_argument("--only", action="append", metavar="MEMBER", help="add only this member (repeatable)")

    ar = sub.add_parser("attach-report", help="add a report made after export (e.g. size-study's input-size.json) "
                                              "to a bundle's reports/, its sha256 recorded in the manifest")
    ar.add_argument("--bundle", required=True, help="bundle folder")
    ar.add_argument("file", help="the report file (its name is kept)")

    mr = sub.add_parser("member-run", help="a run holding one member of a bundle alone, on another run's patient "
                                           "split, to evaluate it alone (e.g. the size a bundle ships, for size-study)")
    mr.add_argument("--bundle", required=True, help="bundle folder")
    mr.add_argument("--member", required=True)
    mr.add_argument("--split-from", required=True, help="a run on the same patient split (its split.csv is used)")
    mr.add_argument("--out", required=True, help="new run folder")

    bb = sub.add_parser("backbones", help="extract ImageNet backbones from the registry packages that ship them "
                                          "(training.backbones); needs pip and npm once")
    bb.add_argument("action", choices=["fetch"])
    bb.add_argument("--out", default="backbones", help="folder for <name>.weights.h5 and <name>.json")

    args = parser.parse_args(argv)
    if args.command == "size-study":
        from training.size_study import study
        report = study({int(k): Path(v) for k, v in (r.split("=", 1) for r in args.run)},
                       {int(k): Path(v) for k, v in (r.split("=", 1) for r in args.three_class)})
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return 0
    if args.command == "probe":
        from training.probe import run_probe
        result = run_probe(args.run, args.data, args.backbone, args.bundle, args.backbones_dir, args.cache)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return 0
    if args.command == "heads-compare":
        from training.heads import compare_decisions
        print(json.dumps(compare_decisions(args.binary_run, args.multiclass_run), indent=2))
        return 0
    if args.command == "add-members":
        from training.combine import add_members
        print("added: " + ", ".join(add_members(args.run, args.bundle, only=args.only)))
        return 0
    if args.command == "attach-report":
        from training.export import attach_report
        print(attach_report(args.bundle, args.file))
        if (Path(args.bundle) / "manifest.sig").exists():
            print("the manifest changed: sign the bundle again (python -m training sign)")
        return 0
    if args.command == "member-run":
        from training.combine import member_run
        print(member_run(args.bundle, args.member, args.split_from, args.out))
        return 0
    if args.command == "backbones":
        from training.backbones import fetch
        for record in fetch(args.out):
            print(json.dumps({k: record[k] for k in ("name", "sha256", "package", "version", "licence")}))
        return 0
    if args.command in ("sign", "keygen"):
        from training.export import new_signing_key, sign_bundle
        if args.command == "keygen":
            new_signing_key(args.private, args.public)
            print(f"key pair written: {args.private} (private), {args.public} (public)")
        else:
            print(f"signature written to {sign_bundle(args.bundle, args.key)}")
        return 0
    if args.command == "guard-population":
        from training.guard.population import refit_population
        refit_population(args.kermany, args.nih, args.site, args.out, seed=args.seed, folds=args.folds)
        return 0
    if args.command == "all" and args.task == TrainingTask.MULTITASK:
        parser.error("a multitask run makes two bundles: run train, heads, then evaluate and export each")
    if args.command == "guard":
        from training.guard import main as guard_main
        return guard_main(args)
    if args.command in ("train", "all"):
        from training.train import train
        weights = dict(w.split("=", 1) for w in args.weights)
        run = train(args.data, args.out, task=args.task, members=args.members.split(","), size=args.size,
                    seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    patience=args.patience, minutes_per_member=args.minutes_per_member, cache_dir=args.cache or None,
                    weights=weights, one_per_patient=args.one_per_patient,
                    keep_official_test=args.keep_official_test, steps=args.steps,
                    mixup=args.mixup)
        if args.command == "train":
            return 0
        args.run = str(run)
    if args.command == "cam-audit":
        from training.cam_audit import audit
        print(json.dumps(audit(args.bundle, args.data, args.n), indent=2))
        return 0
    if args.command == "heads":
        from training.heads import split_heads
        for task, run in split_heads(args.run).items():
            print(f"{task}: {run}")
        return 0
    if args.command in ("evaluate", "all"):
        from training.evaluate import evaluate_run
        summary = evaluate_run(args.run, {"screening": args.screening_sensitivity,
                                          "confirmatory": args.confirmatory_specificity},
                               external=getattr(args, "external", None))
        print(json.dumps(summary, indent=2))
    if args.command in ("export", "all"):
        from training.export import export_bundle
        bundle = export_bundle(args.run, args.bundle, title=args.title, population=args.population,
                               research_use_only=args.research_use_only)
        print(f"bundle written to {bundle}")
    if args.command == "bench":
        from training.bench import bench
        print(json.dumps(bench(args.size, args.batch_size, args.steps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
