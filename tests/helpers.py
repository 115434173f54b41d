"""Shared test helpers: tiny configs and state comparisons."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

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


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_cpu_processes(script) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` on the CPU (gloo). A fresh port
    each time: back-to-back launches on the default 29500 can find it still taken."""
    # CPU processes wherever the test runs: 2 processes on a 1-GPU machine would ask for a
    # second device ("invalid device ordinal"); hidden GPUs make torch and accelerate agree.
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
                           "--dynamo_backend", "no", str(script)],
                          cwd=ROOT, env=env, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
