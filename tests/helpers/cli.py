"""`python -m model …` in this process: `model.__main__.main(argv)` with the bundles folder set and the output
captured. A subprocess would re-import TensorFlow (several seconds) and prove nothing more; the few tests about the
process itself (exit on a signal, what reaches stderr from libraries) keep a real one."""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def run_cli(argv: list[str], bundles=None, env: dict | None = None) -> Done:
    from model.__main__ import main

    overrides = {**({"TORAX_BUNDLES": str(bundles)} if bundles is not None else {}), **(env or {})}
    saved = {k: os.environ.get(k) for k in overrides}
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(overrides)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as stop:  # argparse errors and explicit exits
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Done(int(code or 0), out.getvalue(), err.getvalue())
