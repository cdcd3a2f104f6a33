"""Command line for the serving core: `python -m model {info,predict,bench,serve,pacs,site,archive,record,monitor}`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from model.core.types import CamMethod
from model.outputs.safe_text import log_safe

OPERATING_POINTS = ("screening", "balanced", "confirmatory", "per-class")
"""The operating point names bundles and site profiles use (training.evaluate, model.sites.profiles)."""


def unit_interval(text: str) -> float:
    """argparse type: a finite number in [0, 1] (a clean usage error otherwise, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return value


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port")
    return value


def output_folder(option: str, folder: str | None) -> str | None:
    """None when `folder` can take --cam-dir/--pdf-dir output (created if missing), else the one-line reason."""
    import os

    if folder is None:
        return None
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{option} {log_safe(folder)} is a file, not a folder"
    except OSError as e:
        return f"{option} {log_safe(folder)} could not be created ({e.strerror})"
    if not path.is_dir():
        return f"{option} {log_safe(folder)} is not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{option} {log_safe(folder)} is not writable"
    return None


def _load(bundle_name: str | None):
    from model.core.bundle import NoBundle, load_chosen

    try:
        return load_chosen(bundle_name, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    except NoBundle as e:
        raise SystemExit(f"error: {e}") from None


def cmd_info(args) -> int:
    from model.core.bundle import default_bundle_name, default_problem, load_all

    bundles, errors = load_all()
    out = {"default": default_bundle_name(bundles), "default_problem": default_problem(bundles, errors),
           "bundles": [], "refused": errors}
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
        print(f"{b['name']}{star}: {b['title']} — {b['task']}, classes {', '.join(b['classes'])}, "
              f"version {b['version']}")
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
    if out["default_problem"]:
        print(f"error: {out['default_problem']}")
        return 1
    return 0


def cmd_predict(args) -> int:
    from model.core.analysis import analyse, failed, resolve_threshold
    from model.core.ensemble import Ensemble
    from model.core.explain import Explainer, overlay
    from model.core.guard import for_bundle

    for option, folder in (("--cam-dir", args.cam_dir), ("--pdf-dir", args.pdf_dir)):
        problem = output_folder(option, folder)  # before loading models: a typo costs nothing
        if problem:
            print(f"python -m model predict: error: {problem}", file=sys.stderr)
            return 2
    _, bundle = _load(args.bundle)
    site = _site(args.site, bundle)
    try:
        resolve_threshold(bundle, args.threshold, args.operating_point, site)
    except (KeyError, ValueError) as e:
        print(f"python -m model predict: error: {e.args[0]}", file=sys.stderr)
        return 2
    from model.store.recorder import OFF, Channel, record, upload_facts

    ensemble = Ensemble(bundle)
    guard = for_bundle(bundle)
    explainer = Explainer(bundle) if args.cam_dir or args.pdf_dir else None
    any_failed, pending = False, None
    for i, file in enumerate(args.files):
        path = Path(file)
        start = time.perf_counter()
        try:
            data = path.read_bytes()
        except OSError as e:
            data = facts = None
            result, decoded = failed(path.name, bundle, "unreadable_file",
                                     f"Could not read this file ({e.strerror})."), None
        else:
            facts = upload_facts(data) if args.record else None  # hashed while the analysis runs
            result, decoded = analyse(data, path.name, ensemble, args.threshold, args.operating_point, guard=guard,
                                      site=site)
        latency_ms = (time.perf_counter() - start) * 1000
        recorded = record(result, bundle, channel=Channel.CLI, data=data, facts=facts, site=site,
                          latency_ms=latency_ms) if args.record else OFF
        result.file = str(file)
        try:
            if decoded is not None and args.cam_dir:
                cam = explainer.cams(decoded.pixels, args.cam_method)["ensemble"]
                out = Path(args.cam_dir) / f"{i:04d}-{path.stem}-cam.png"
                import cv2
                encoded = cv2.imencode(".png", cv2.cvtColor(overlay(decoded.pixels, cam), cv2.COLOR_RGB2BGR))[1]
                out.write_bytes(encoded.tobytes())  # unlike cv2.imwrite, says when it can't
                result.cam = str(out)
            if args.pdf_dir:
                from model.outputs.pdf_report import write_pdf
                write_pdf(Path(args.pdf_dir) / f"{i:04d}-{path.stem}-report.pdf", result, bundle, decoded,
                          explainer)
        except OSError as e:
            print(f"python -m model predict: error: could not write the output for {log_safe(file)} "
                  f"({e.strerror or type(e).__name__})", file=sys.stderr)
            return 2
        any_failed |= result.failed
        shown_file = log_safe(file, 4096)  # a newline in a file name can't forge a result line
        kept = "" if recorded.id is None else f"  [record {'pending ' if recorded.pending else ''}{recorded.id}]"
        if args.json:
            print(json.dumps({**result.to_json(), "record": recorded.to_json()}), flush=True)
        elif result.error:
            print(f"{shown_file}: ERROR {result.error['message']}{kept}")
        else:
            p = result.probability
            shown = f"p({bundle.classes[-1]})={p:.3f}" if p is not None else json.dumps(result.probabilities)
            warn = "; ".join(w["message"] for w in result.warnings)
            label = result.label if result.label is not None else "not assessed"
            print(f"{shown_file}: {label} {shown} (threshold {result.threshold}){'  ⚠ ' + warn if warn else ''}"
                  f"{kept}")
        if recorded.pending:
            pending = recorded.message or "the database can't be written now"
    if pending:
        print(f"warning: the results are kept in the spool until the record database is back: {pending}",
              file=sys.stderr)
    return 1 if any_failed else 0


def _site(name: str | None, bundle):
    """The verified site profile `name` for this bundle, or None; exits with the reason when it is refused."""
    if not name:
        return None
    from model.sites.profiles import SiteError, load

    try:
        return load(name, bundle)
    except SiteError as e:
        raise SystemExit(f"error: {e.message}") from None


def cmd_bench(args) -> int:
    from model.channels.bench import bench

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

    from model.channels.api import create_app
    from model.channels.http_guard import tokens_from_env, uvicorn_options
    from model.channels.net import is_loopback

    if not is_loopback(args.host) and not tokens_from_env():
        print(f"python -m model serve: error: binding {args.host} (not loopback) needs bearer tokens: set "
              "TORAX_API_TOKENS (docs/SECURITY.md), or serve on 127.0.0.1 behind a reverse proxy", file=sys.stderr)
        return 2
    # uvicorn's access log would print each request line with its query string; model.channels.api logs method, path,
    # status and time instead, and never a body or a file name. Its lines go out through uvicorn's handler.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["model"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    # Header deadline and per-client pending limit, header size cap, short keep-alive (model.channels.http_guard);
    # the body has its own deadline in model.channels.api (UPLOAD_TIMEOUT_S) and the analysis its own
    # (REQUEST_TIMEOUT_S).
    uvicorn.run(create_app(max_inflight=args.max_inflight, record=args.record), host=args.host, port=args.port,
                access_log=False, log_config=log_config, **uvicorn_options(args.max_connections))
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
    g.add_argument("--threshold", type=unit_interval, default=None, help="decision threshold in [0, 1]")
    g.add_argument("--operating-point", default=None, choices=OPERATING_POINTS,
                   help="the bundle's (or site profile's) operating point; default: the bundle's default")
    p.add_argument("--cam-dir", default=None, help="write an ensemble Grad-CAM overlay PNG per file here")
    p.add_argument("--cam-method", default=CamMethod.GRADCAM.value, choices=[m.value for m in CamMethod])
    p.add_argument("--pdf-dir", default=None, help="write a PDF report per file here")
    p.add_argument("--site", default=None, help="apply this site profile (python -m model site fit)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="do not keep these results in the record (python -m model record)")
    b = sub.add_parser("bench", help="speed of the installed bundle on generated images (JSON with --json)")
    b.add_argument("--bundle", default=None)
    b.add_argument("--repeats", type=positive_int, default=20)
    b.add_argument("--json", action="store_true")
    s = sub.add_parser("serve", help="REST API: POST /v1/predict, GET /v1/bundles, GET /healthz (docs/API.md)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port_number, default=8000)
    s.add_argument("--max-inflight", type=positive_int, default=16,
                   help="analyses admitted at once; more are answered 503 busy with Retry-After")
    s.add_argument("--max-connections", type=positive_int, default=64,
                   help="open connections beyond this are answered 503 by uvicorn")
    s.add_argument("--no-record", dest="record", action="store_false",
                   help="do not keep the results in the record")
    from model.channels.pacs import add_cli
    from model.channels.pacs import cli as cmd_pacs
    add_cli(sub)  # pacs watch
    from model.channels import site_cli
    site_cli.add_cli(sub)  # site fit / validate / list
    from model.channels import archive, record_cli
    archive.add_cli(sub)  # archive score
    record_cli.add_cli(sub)  # record confirm / import-confirmations / show / find / export / retain; monitor
    args = parser.parse_args(argv)
    return {"info": cmd_info, "predict": cmd_predict, "bench": cmd_bench, "serve": cmd_serve,
            "pacs": cmd_pacs, "site": site_cli.cli, "archive": archive.cli, "record": record_cli.cli,
            "monitor": record_cli.cli}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
