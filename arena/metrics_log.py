"""What a run logs: values summed on the device between logs (Tally), and the rows of
metrics.jsonl (+ the trackers of train.log_with) written by the main process (MetricsLog)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from .registry import ConfigError, suggest
from .rundir import TRACKERS, drop_metrics_after


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


def _accelerate_trackers() -> dict:
    """accelerate's trackers by name (tensorboard, wandb, comet_ml, aim, mlflow, ...)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return LOGGER_TYPE_TO_CLASS


def _installed(name: str) -> bool:
    """accelerate's own test of whether a tracker's package can be imported."""
    import accelerate.utils as au

    return getattr(au, f"is_{name}_available")()


# the package a user installs for a tracker, where its name differs from the tracker's
_PACKAGES = {"tensorboard": "tensorboard (or tensorboardX)", "comet_ml": "comet-ml"}


def check_tracker_names(names: list[str]) -> None:
    """train.log_with names trackers of accelerate.tracking (no import of their packages)."""
    if not names:
        return
    known = list(_accelerate_trackers())
    for i, name in enumerate(names):
        if name not in known:
            raise ConfigError(f"train.log_with[{i}]: unknown tracker '{name}'{suggest(name, known)}; "
                              f"accelerate.tracking supports: {', '.join(known)}")
    if len(set(names)) < len(names):
        raise ConfigError(f"train.log_with: a tracker is named twice in {names}")


def check_trackers_installed(names: list[str]) -> None:
    """A tracker whose package is missing fails here, before training, naming the package
    (rather than after hours, when the first value is logged)."""
    for name in names:
        if not _installed(name):
            package = _PACKAGES.get(name, name)
            raise ConfigError(f"train.log_with: the '{name}' tracker needs the {package} package, which is not "
                              f"installed: pip install {package.split()[0]}, or drop '{name}' from train.log_with "
                              f"(metrics.jsonl is written either way)")


def _flat_config(tree: dict, prefix: str = "") -> dict:
    """{'train': {'steps': 3}} -> {'train.steps': 3}: the scalar types trackers store as
    hyper-parameters (lists and None as text)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_config(v, key + "."))
        else:
            out[key] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


class MetricsLog:
    """metrics.jsonl (the record of a run) + the trackers of train.log_with, on the main
    process; a no-op elsewhere. Rows after `start` (steps the run does again) are dropped
    when it opens, and TensorBoard purges its events after `start` likewise."""

    def __init__(self, run_dir: Path, enabled: bool, start: int = 0, log_with: list[str] = (),
                 config: dict | None = None, name: str = "run"):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.trackers = []
        self.dropped = 0
        if not enabled:
            return
        self.dropped = drop_metrics_after(self.path, start)
        classes = _accelerate_trackers()
        for tracker_name in log_with:
            cls = classes[tracker_name]
            kwargs = {"purge_step": start + 1} if tracker_name == "tensorboard" else {}
            args = (name, str(run_dir / TRACKERS)) if cls.requires_logging_directory else (name,)
            tracker = cls(*args, **kwargs)
            tracker.main_process_only = False  # only the main process makes one (no accelerate state needed)
            tracker.start()
            if config is not None:
                tracker.store_init_configuration(_flat_config(config))
            self.trackers.append(tracker)

    def __call__(self, step: int, values: dict) -> None:
        if not self.enabled or not values:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            if numbers:
                tracker.log(numbers, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
