"""The benchmarks are a folder of the checkout, not of the installed package: put the
checkout's root on the import path so ``import benchmarks`` works however pytest is started."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
