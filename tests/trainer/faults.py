"""Fault injection for the Ray tests: a picklable step hook (``trainer.train.run(..., step_hook=)``)."""
from __future__ import annotations

import json
import os
from pathlib import Path


class DieOnce:
    """Kill the worker process of rank 1 (rank 0 when alone) when it is about to run ``step``,
    once: ``marker`` records that it happened, so the restarted worker group goes on."""

    def __init__(self, step: int, marker: str | Path):
        self.step, self.marker = step, str(marker)

    def __call__(self, step: int, rank: int, world: int) -> None:
        if step == self.step and rank == (1 if world > 1 else 0) and not os.path.exists(self.marker):
            Path(self.marker).touch()
            print(json.dumps({"event": "fault_injected", "step": step, "rank": rank}), flush=True)
            os._exit(1)
