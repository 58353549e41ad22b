"""Wall time per named phase: the controller's ``timing/<phase>`` and the run's phase table."""

from __future__ import annotations

import time
from collections.abc import Iterable


class Timer:
    """Seconds per named phase, summed over calls; ``phases`` are reported even when unused."""

    def __init__(self, phases: Iterable[str] = ()) -> None:
        self.s: dict[str, float] = dict.fromkeys(phases, 0.0)

    def run(self, phase: str, fn, *args, **kw):
        started = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.s[phase] = self.s.get(phase, 0.0) + time.perf_counter() - started
