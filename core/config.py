"""Where binsight keeps things: the experiment store and the default data folder."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_COUNT = 5  # the paper's task: bins holding 0..5 items, six classes
SHARED_SAMPLE = PROJECT_ROOT.parent / "shared" / "abid-sample"
DEFAULT_DATA = PROJECT_ROOT / "data" / "abid"  # where `make run` fetches its sample when there is no data
INCOMPLETE = ".sample-incomplete"  # marks a sample download still in progress (resumed by the next suite)
DEFAULT_SAMPLE_SIZE = 1000


def store_dir() -> Path:
    """The experiment store and model files: `BINSIGHT_STORE`, default `models/`."""
    return Path(os.environ.get("BINSIGHT_STORE") or PROJECT_ROOT / "models")  # unset or empty: models/


def find_data_dir() -> Path | None:
    """The default data folder: `ABID_DATA`, else `data/abid` (once its sample is complete), else the
    shared ABID sample."""
    env = os.environ.get("ABID_DATA")
    if env:
        return Path(env)
    if DEFAULT_DATA.is_dir() and not (DEFAULT_DATA / INCOMPLETE).exists():
        return DEFAULT_DATA
    return SHARED_SAMPLE if SHARED_SAMPLE.is_dir() else None


DOWNLOAD_HINT = "python train.py download --n 2000 --out data/abid"
