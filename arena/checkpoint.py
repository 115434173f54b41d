"""Checkpoints: one directory per save, written atomically, loaded without unpickling.

    run.dir/checkpoints/checkpoint-000500/state.pt       nets, optimizers, EMA, scalers,
                                                         counters, data position, config
    run.dir/checkpoints/checkpoint-000500/rng-rank0.pt   each process's RNG states

A save goes to `.tmp-checkpoint-000500/` and is renamed into place only when every
file is written, so a run killed mid-save leaves the previous checkpoint whole.
Everything stored is tensors, numbers, strings, lists and dicts, so loading uses
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .registry import ConfigError

_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under root/checkpoints, oldest first."""
    root = Path(root) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "state.pt").is_file()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(run_dir: str | Path, which: str, key: str = "run.resume") -> Path:
    """'latest' -> the newest complete checkpoint of run_dir; otherwise a checkpoint path."""
    if which == "latest":
        found = checkpoint_dirs(run_dir)
        if not found:
            raise ConfigError(f"{key}: no checkpoint found under {Path(run_dir) / 'checkpoints'}")
        return found[-1]
    path = Path(which)
    if not (path / "state.pt").is_file():
        raise ConfigError(f"{key}: {path} is not a checkpoint directory (no state.pt in it)")
    return path


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def tmp_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f".tmp-checkpoint-{step:06d}"


def final_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"checkpoint-{step:06d}"


def prepare(run_dir: str | Path, step: int) -> Path:
    """Main process: a fresh temporary directory for the save of `step`."""
    tmp = tmp_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write(path: Path, obj) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def commit(run_dir: str | Path, step: int, keep: int) -> Path:
    """Main process: move the finished save into place, then drop the oldest beyond `keep`."""
    tmp, final = tmp_dir(run_dir, step), final_dir(run_dir, step)
    if final.exists():  # re-saving the same step (e.g. the end of a resumed run)
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    for stale in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(stale)
    for leftover in (Path(run_dir) / "checkpoints").glob(".tmp-checkpoint-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # from an earlier killed save
    return final


def load(path: Path, rank: int = 0) -> tuple[dict, dict | None]:
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    rng_path = path / f"rng-rank{rank}.pt"
    rng = torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.is_file() else None
    return state, rng


def check_compatible(name: str, saved: dict, net: torch.nn.Module, where: Path) -> None:
    """Fail with the differing parameter names and shapes when a net changed shape."""
    current = net.state_dict()
    problems = []
    for key in sorted(set(saved) | set(current)):
        if key not in current:
            problems.append(f"'{key}' is in the checkpoint but not in the configured net")
        elif key not in saved:
            problems.append(f"'{key}' is in the configured net but not in the checkpoint")
        elif tuple(saved[key].shape) != tuple(current[key].shape):
            problems.append(f"'{key}' has shape {tuple(saved[key].shape)} in the checkpoint, "
                            f"{tuple(current[key].shape)} in the config")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ConfigError(f"checkpoint {where} does not fit net '{name}' built from the config: {shown}")
