"""Shared test helpers: tiny configs and state comparisons."""
from __future__ import annotations

import torch

import arena.prior_match  # noqa: F401
import dim  # noqa: F401
import implicit_gen  # noqa: F401
from arena.config import load_config


def tiny(name: str, run_dir, *overrides: str):
    """A shipped config shrunk to run in a second or two on the CPU."""
    return load_config(name, [f"run.dir={run_dir}", "train.progress=false", *overrides])


def assert_same_state(a: dict, b: dict, path: str = "") -> None:
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    else:
        assert a == b, path
