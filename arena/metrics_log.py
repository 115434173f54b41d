"""What a run logs: values summed on the device between logs (Tally), and the rows of
metrics.jsonl (+ TensorBoard when installed) written by the main process (MetricsLog)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from .rundir import drop_metrics_after


class Tally:
    """Each logged value's running sum since the last log, and the first step it was
    non-finite, kept on the device: a step never waits for the host, and the values are
    read back once per log."""

    def __init__(self, device: torch.device):
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.first_bad: dict[str, Tensor] = {}  # -1: finite so far
        # the step being run, 1-based as logged (step s is the s-th update); the loop sets it
        self.step = torch.zeros((), device=device, dtype=torch.long)

    def add(self, prefix: str, values: dict[str, Tensor]) -> None:
        for key, value in values.items():
            k = f"{prefix}/{key}"
            v = value.detach().float()
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
            bad = self.first_bad.get(k)
            if bad is None:
                bad = self.first_bad[k] = torch.full((), -1, device=self.step.device, dtype=torch.long)
            self.first_bad[k] = torch.where((bad < 0) & ~torch.isfinite(v), self.step, bad)

    def means(self) -> dict[str, float]:
        """The mean of each value since the last call (read back from the device), then reset."""
        values = {k: float(v.item()) / self.counts[k] for k, v in self.sums.items()}
        self.sums.clear()
        self.counts.clear()
        return values

    def first_nonfinite(self, world: int) -> tuple[str, int] | None:
        """(key, step) of the first value to go non-finite on any process, or None: every
        process gets the same answer (one all-reduce), so all stop together or none does."""
        keys = sorted(self.first_bad)
        if not keys:
            return None
        firsts = torch.stack([self.first_bad[k] for k in keys])
        if world > 1:
            never = torch.iinfo(torch.long).max  # a process with no bad step must not win the MIN
            firsts = torch.where(firsts < 0, never, firsts)
            torch.distributed.all_reduce(firsts, op=torch.distributed.ReduceOp.MIN)
            firsts = torch.where(firsts == never, -1, firsts)
        # the first to go (the others follow from it); ties by name, so every process names the same
        bad = sorted((step, key) for key, step in zip(keys, firsts.tolist()) if step >= 0)
        return (bad[0][1], bad[0][0]) if bad else None


class MetricsLog:
    """metrics.jsonl (+ TensorBoard when installed) on the main process; a no-op elsewhere.
    Rows after `start` (steps the run does again) are dropped when it opens."""

    def __init__(self, run_dir: Path, enabled: bool, start: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.dropped = 0
        if enabled:
            self.dropped = drop_metrics_after(self.path, start)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1)
            except ImportError:  # tensorboard is optional
                self.tb = None

    def __call__(self, step: int, values: dict) -> None:
        if not self.enabled or not values:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

