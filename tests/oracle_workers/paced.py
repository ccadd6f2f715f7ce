"""A rastrigin oracle whose agents run at different speeds (test_orchestrator_reliability.py).

The batch entry point `rastrigin` scores as the builtin does, then sleeps
PACED_ORACLE_SECONDS per candidate. The oracle configuration passes that variable through
by name (`env: [PACED_ORACLE_SECONDS]`), so its value is not part of the config_hash:
agents of one configuration — one oracle as far as a run is concerned — and different
speeds, each set by its own process environment.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

DELAY_VARIABLE = "PACED_ORACLE_SECONDS"


def rastrigin(genomes: list[dict[str, Any]]) -> list[float]:
    x = np.array([genome["x"] for genome in genomes], dtype=np.float64)
    scores = 10.0 * x.shape[1] + (x * x - 10.0 * np.cos(2.0 * np.pi * x)).sum(axis=1)
    time.sleep(float(os.environ.get(DELAY_VARIABLE, "0")) * len(genomes))
    return [float(score) for score in scores]
