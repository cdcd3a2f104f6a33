"""`python -m model record {confirm,import-confirmations,show,find,export,retain}` and `python -m model monitor`: the
department's record from the command line (model/store/). Exit status: 0 done, 1 some rows were not applied
(import), 2 usage or a refused confirmation, 3 the database can't be used now (the message says why)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.outputs.safe_text import log_safe


def iso_time(text: str):
    """argparse type: an ISO 8601 date or time, as naive UTC."""
    from model.store.db import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time (e.g. 2025-03-01 or "
                                         "2025-03-01T08:00Z)") from None


def add_cli(sub) -> None:
    from model.__main__ import positive_int

    record = sub.add_parser("record", help="the record of every result: confirm, import truth, export, retention")
    verbs = record.add_subparsers(dest="record_command", required=True)
    c = verbs.add_parser("confirm", help="record the reader's read (or the truth) for one result")
    c.add_argument("record_id", help="the result's record id (printed by predict, shown in Diagnose)")
    c.add_argument("--label", required=True, help="one of the bundle's classes (e.g. NORMAL, PNEUMONIA) or UNSURE")
    c.add_argument("--note", default=None, help="an optional note (at most 1000 characters)")
    c.add_argument("--user", default="local", help="who confirms (default: local)")
    i = verbs.add_parser("import-confirmations", help="confirm results in bulk from a CSV: sha256 or "
                                                      "sop_instance_uid, label, optional note")
    i.add_argument("csv", help="the CSV file")
    i.add_argument("--user", default="local")
    i.add_argument("--json", action="store_true")
    s = verbs.add_parser("show", help="one result and its confirmations, as JSON")
    s.add_argument("record_id")
    f = verbs.add_parser("find", help="the results of one image or study, as JSON lines")
    key = f.add_mutually_exclusive_group(required=True)
    key.add_argument("--sha256")
    key.add_argument("--sop-instance-uid")
    key.add_argument("--study-instance-uid")
    e = verbs.add_parser("export", help="an audit extract of the results (and their latest confirmation)")
    e.add_argument("--format", choices=("csv", "parquet"), required=True)
    e.add_argument("--out", required=True, help="the file to write")
    e.add_argument("--since", type=iso_time, default=None)
    e.add_argument("--until", type=iso_time, default=None)
    r = verbs.add_parser("retain", help="delete results older than N days (the deletion is logged)")
    r.add_argument("--days", type=positive_int, required=True)
    r.add_argument("--user", default="local")

    m = sub.add_parser("monitor", help="volume, guard rates, drift and live performance for a period")
    m.add_argument("--since", type=iso_time, default=None, help="start (ISO 8601, UTC unless an offset is given)")
    m.add_argument("--until", type=iso_time, default=None, help="end (default: now)")
    m.add_argument("--site", default=None, help="the site profile whose calibration, point and numbers are used")
    m.add_argument("--bundle", default=None)
    m.add_argument("--operating-point", default=None)
    m.add_argument("--json", action="store_true")


def _fail(code: int, message: str) -> int:
    print(f"error: {log_safe(message, 4000)}", file=sys.stderr)
    return code


def _dump(row: dict) -> str:
    from model.store.db import json_ready

    return json.dumps(json_ready(row))


def cli(args) -> int:
    from model.store.confirmations import Refused
    from model.store.db import StoreError, StoreUnavailable

    try:
        if args.command == "monitor":
            return _monitor(args)
        return {"confirm": _confirm, "import-confirmations": _import, "show": _show, "find": _find,
                "export": _export, "retain": _retain}[args.record_command](args)
    except Refused as e:
        return _fail(2, e.message)
    except StoreUnavailable as e:
        return _fail(3, e.message)
    except StoreError as e:
        return _fail(3 if e.code in ("corrupt", "not_a_database", "foreign", "newer_schema") else 2, e.message)


def _confirm(args) -> int:
    from model.store.confirmations import Source
    from model.store.recorder import recorder

    done = recorder().confirm(args.record_id, args.label, args.note, user=args.user, source=Source.CLI)
    print(json.dumps({"confirmation": done.id, "result": args.record_id, "state": done.state}))
    return 0


def _import(args) -> int:
    from model.store.confirmations import Refused, import_csv
    from model.store.db import utc_now
    from model.store.recorder import recorder

    try:
        data = Path(args.csv).read_bytes()
    except OSError as e:
        raise Refused("unreadable", f"{args.csv} can't be read ({e.strerror}).") from None
    report = import_csv(recorder().store(), data, args.user, utc_now())
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['rows']} rows: {report['matched']} matched ({report['confirmed']} results confirmed), "
              f"{report['unmatched']} unmatched, {report['ambiguous']} ambiguous, {report['refused']} refused")
        for p in report["problems"]:
            print(f"  line {p['line']}: {p['outcome']}: {log_safe(p['reason'], 300)}")
    return 0 if report["matched"] == report["rows"] else 1


def _show(args) -> int:
    from model.store.confirmations import Refused, check_id
    from model.store.recorder import recorder

    found = recorder().store().result(check_id(args.record_id))
    if found is None:
        raise Refused("unknown_id", f"No recorded result has the id {args.record_id}.")
    print(_dump(found))
    return 0


def _find(args) -> int:
    from model.store.recorder import recorder

    column, value = next((c, v) for c, v in (("input_sha256", args.sha256),
                                             ("sop_instance_uid", args.sop_instance_uid),
                                             ("study_instance_uid", args.study_instance_uid)) if v)
    for row in recorder().store().find(column, [value.lower() if column == "input_sha256" else value]):
        print(_dump(row))
    return 0


def _export(args) -> int:
    from model.outputs.safe_text import csv_text
    from model.store.recorder import recorder

    frame = recorder().store().extract(args.since, args.until)
    out = Path(args.out)
    try:
        if args.format == "csv":
            out.write_text(csv_text(frame), encoding="utf-8")  # notes can't run as spreadsheet formulas
        else:
            frame.to_parquet(out, index=False)
    except OSError as e:
        return _fail(2, f"{args.out} could not be written ({e.strerror}).")
    print(json.dumps({"out": str(out), "format": args.format, "results": len(frame)}))
    return 0


def _retain(args) -> int:
    from model.store.recorder import recorder

    print(json.dumps(recorder().store().retain(args.days, user=args.user)))
    return 0


def _monitor(args) -> int:
    from model.core.bundle import NoBundle, load_chosen
    from model.sites.profiles import SiteError, load
    from model.store.monitor import run
    from model.store.recorder import recorder

    try:
        _, bundle = load_chosen(args.bundle, warn=lambda m: print(f"warning: {m}", file=sys.stderr), models=False)
    except NoBundle as e:
        return _fail(2, str(e))
    try:
        site = load(args.site, bundle) if args.site else None
    except SiteError as e:
        return _fail(2, e.message)
    if args.operating_point:
        try:
            (site or bundle).operating_point(args.operating_point)
        except (KeyError, ValueError) as e:
            return _fail(2, str(e).strip("'\""))
    keeper = recorder()
    report = run(keeper.store(), bundle, site=site, operating_point=args.operating_point, since=args.since,
                 until=args.until)
    report["recording_pending"] = keeper.pending()
    if args.json:
        print(json.dumps(report))
        return 0
    for line in summary_lines(report):
        print(line)
    return 0


def summary_lines(report: dict) -> list[str]:
    """What `monitor` prints without --json."""
    period = report["period"]
    lines = [f"{report['n']} results of {report['bundle']['name']} {report['bundle']['version']}, "
             f"{period['since'] or 'start'} to {period['until'] or 'now'}"
             + (f" (site profile {report['site']})" if report["site"] else "")]
    lines.append("labels: " + (", ".join(f"{k} {v}" for k, v in report["labels"].items()) or "none"))
    lines.append("guards: " + (", ".join(f"{k} {v:.1%}" for k, v in report["guards"].items() if v is not None)
                               or "none"))
    drift = report.get("drift")
    if drift:
        lines.append(f"drift against {drift['reference']}: " + (
            f"PSI {drift['psi']:.3f}, KS p {drift['ks_p']:.3g}" if drift["psi"] is not None else drift.get("note", "")))
    performance = report.get("performance")
    if performance:
        if performance["status"] != "ok":
            lines.append(f"performance: {performance['status']} ({performance['n_confirmed']} confirmed; at least "
                         f"{performance['minimum']['confirmed']}, {performance['minimum']['per_class']} per class)")
        else:
            lines.append(f"performance on {performance['n_confirmed']} confirmed: " + ", ".join(
                f"{k} {performance[k]['value']:.3f} ({performance[k]['ci95'][0]:.3f}–{performance[k]['ci95'][1]:.3f})"
                for k in ("sensitivity", "specificity", "auc") if performance[k]["value"] is not None))
    for alarm in report["alarms"]:
        lines.append(f"ALARM {alarm['code']}: {alarm['message']}")
    if not report["alarms"]:
        lines.append("no alarms")
    if report.get("recording_pending"):
        lines.append(f"{report['recording_pending']} record(s) wait in the spool for the database")
    return lines
