import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory) -> Path:
    """A bundles folder with one real (tiny, barely trained) binary bundle, built once per test session."""
    from synthetic import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny"))
