"""What Streamlit does after every script run, made cheap for an app that holds TensorFlow.

Every interaction is a script run: a page opened, a file dropped, a slider moved. After each one Streamlit 1.67
calls `keras.backend.clear_session()` whenever Keras is imported (`script_runner._clean_problem_modules`), which
empties TensorFlow's kernel cache and runs a full garbage collection, and then runs another full collection of
its own (`runner.postScriptGC`). With TensorFlow, Keras and a bundle's members loaded the collector tracks about
540,000 objects, almost all of them alive for the life of the server. Measured on a live server with the test
suite's tiny bundle, an upload cost 1.4 s of server CPU: 0.2 s once these two are dealt with.

- `keep_keras_session()`: the app loads its models once (`st.cache_resource`) and never builds one again, so
  there is nothing in Keras' session to clear; emptying the kernel cache only made the next run rebuild kernels.
- `settle_heap()`, after the one-off loads: one collection, then `gc.freeze()` moves what is left (imported
  modules, loaded models) out of the collector's sight. Streamlit's collection after each run stays (it keeps a
  busy server's memory flat: tests/test_load.py) but walks only what runs create. Objects are still freed by
  their reference counts, and what dies after a freeze in a reference cycle is not reclaimed, so it is called
  only after loads whose results are kept.
"""
from __future__ import annotations

import gc
import sys

from streamlit.runtime.scriptrunner import script_runner


def _close_matplotlib_figures() -> None:
    """Streamlit's end-of-run cleanup without its Keras part (matplotlib's figures are still closed)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


def keep_keras_session() -> None:
    """Stop Streamlit from clearing Keras' session after every script run (does nothing if Streamlit renames
    its hook)."""
    if getattr(script_runner, "_clean_problem_modules", None) is not None:
        script_runner._clean_problem_modules = _close_matplotlib_figures


def settle_heap() -> None:
    """Collect once, then freeze what survived (imports and loaded models) so later collections skip it."""
    gc.collect()
    gc.freeze()
