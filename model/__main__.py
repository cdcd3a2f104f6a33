"""Command line for the serving core: `python -m model {info,predict,bench,serve}`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load(bundle_name: str | None):
    from model.bundle import default_bundle_name, load_all

    bundles, errors = load_all()
    for folder, message in errors.items():
        print(f"warning: {message}", file=sys.stderr)
    name = bundle_name or default_bundle_name(bundles)
    if name not in bundles:
        known = ", ".join(bundles) or "none"
        raise SystemExit(f"error: no usable model bundle named {name!r} (available: {known})")
    return bundles, bundles[name]


def cmd_info(args) -> int:
    from model.bundle import default_bundle_name, load_all

    bundles, errors = load_all()
    out = {"default": default_bundle_name(bundles), "bundles": [], "refused": errors}
    for b in bundles.values():
        out["bundles"].append({"name": b.name, "title": b.title, "task": b.task, "classes": b.classes,
                               "version": b.version, "input": b.input_spec,
                               "members": [{"name": m.name, "arch": m.info.get("arch"), "params": m.info.get("params"),
                                            "temperature": m.temperature} for m in b.members],
                               "operating_points": b.operating_points,
                               "evaluation": b.manifest.get("evaluation")})
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for b in out["bundles"]:
        star = " (default)" if b["name"] == out["default"] else ""
        print(f"{b['name']}{star}: {b['title']} — {b['task']}, classes {', '.join(b['classes'])}, version {b['version']}")
        for m in b["members"]:
            print(f"  member {m['name']}: {m['arch']}, {m['params']:,} parameters, T={m['temperature']:.2f}")
        for p in b["operating_points"]:
            if "threshold" in p:
                print(f"  operating point {p['name']}: threshold {p['threshold']:.3f} "
                      f"(val sensitivity {p['val_sensitivity']:.3f}, specificity {p['val_specificity']:.3f})")
        ev = b["evaluation"] or {}
        if "auc" in ev:
            print(f"  internal test (n={ev['n']}): AUC {ev['auc']:.3f} [{ev['auc_ci95'][0]:.3f}, "
                  f"{ev['auc_ci95'][1]:.3f}], accuracy {ev['accuracy']:.3f} at {ev['at']}")
    for folder, message in errors.items():
        print(f"refused {folder}: {message}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from model.analysis import analyse
    from model.ensemble import Ensemble
    from model.explain import Explainer, overlay
    from model.guard import for_bundle

    _, bundle = _load(args.bundle)
    ensemble = Ensemble(bundle)
    guard = for_bundle(bundle)
    explainer = Explainer(bundle) if args.cam_dir or args.pdf_dir else None
    failed = False
    for i, file in enumerate(args.files):
        path = Path(file)
        try:
            data = path.read_bytes()
        except OSError as e:
            data, read_error = None, {"code": "unreadable_file", "message": f"Could not read this file ({e.strerror})."}
        if data is None:
            from model.analysis import empty_result
            result, decoded = empty_result(path.name, bundle), None
            result["error"] = read_error
        else:
            result, decoded = analyse(data, path.name, ensemble, args.threshold, args.operating_point,
                                      guard=guard)
        result["file"] = str(file)
        if decoded is not None and args.cam_dir:
            cam = explainer.cams(decoded.pixels, args.cam_method)["ensemble"]
            out = Path(args.cam_dir) / f"{i:04d}-{path.stem}-cam.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            import cv2
            cv2.imwrite(str(out), cv2.cvtColor(overlay(decoded.pixels, cam), cv2.COLOR_RGB2BGR))
            result["cam"] = str(out)
        if args.pdf_dir:
            from model.pdf_report import write_pdf
            write_pdf(Path(args.pdf_dir) / f"{i:04d}-{path.stem}-report.pdf", result, bundle, decoded, explainer)
        failed |= result["error"] is not None
        result.pop("meta", None) if not args.json else None
        if args.json:
            print(json.dumps(result, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)),
                  flush=True)
        elif result["error"]:
            print(f"{file}: ERROR {result['error']['message']}")
        else:
            p = result["probability"]
            shown = f"p({bundle.classes[-1]})={p:.3f}" if p is not None else json.dumps(result["probabilities"])
            warn = "; ".join(w["message"] for w in result["warnings"])
            print(f"{file}: {result['label']} {shown} (threshold {result['threshold']}){'  ⚠ ' + warn if warn else ''}")
    return 1 if failed else 0


def cmd_bench(args) -> int:
    from model.bench import bench

    _, bundle = _load(args.bundle)
    result = bench(bundle, repeats=args.repeats)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


def cmd_serve(args) -> int:
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from model.api import create_app

    # uvicorn's access log would print each request line with its query string; model.api logs method, path,
    # status and time instead, and never a body or a file name. Its lines go out through uvicorn's handler.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["model"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    uvicorn.run(create_app(), host=args.host, port=args.port, access_log=False, log_config=log_config)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="bundles, members, classes, operating points, evaluation summary")
    info.add_argument("--json", action="store_true")
    p = sub.add_parser("predict", help="predict files; --json prints one JSON object per file per line")
    p.add_argument("files", nargs="+")
    p.add_argument("--bundle", default=None, help="bundle name (default: the default bundle)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None)
    g.add_argument("--operating-point", default=None, help="screening, balanced or confirmatory")
    p.add_argument("--cam-dir", default=None, help="write an ensemble Grad-CAM overlay PNG per file here")
    p.add_argument("--cam-method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam"])
    p.add_argument("--pdf-dir", default=None, help="write a PDF report per file here")
    p.add_argument("--json", action="store_true")
    b = sub.add_parser("bench", help="speed of the installed bundle on generated images (JSON with --json)")
    b.add_argument("--bundle", default=None)
    b.add_argument("--repeats", type=int, default=20)
    b.add_argument("--json", action="store_true")
    s = sub.add_parser("serve", help="REST API: POST /v1/predict, GET /v1/bundles, GET /healthz (docs/API.md)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    from model.pacs import add_cli, cli as cmd_pacs
    add_cli(sub)  # pacs watch
    args = parser.parse_args(argv)
    return {"info": cmd_info, "predict": cmd_predict, "bench": cmd_bench, "serve": cmd_serve,
            "pacs": cmd_pacs}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
