"""Step time of arena's trainer against a bare PyTorch loop of the same nets, losses and
optimizers, in one run, so the cost of the trainer's bookkeeping (phase schedule,
requires_grad toggling, scalers, loss accumulation, non-finite tracking) is visible.

    python benchmarks/trainer_overhead.py --config nsgan_cp_digits --steps 200
    python benchmarks/trainer_overhead.py --config ie_digits --device cuda

Both loops draw batches the same way (an in-memory index per step) and skip sample
grids and checkpoints inside the timed window. Prints one line per loop and the
overhead in percent; target: under 5%.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

import dim  # noqa: F401  importing the method packages registers their objectives
import implicit_gen  # noqa: F401
from arena.config import load_config
from arena.data import build_dataset, to_float
from arena.objective import Batch, build_objective, data_info
from arena.registry import ConfigError, cli_error
from arena.trainer import make_optimizer, train
from eval.cli_args import count_arg


def bare_loop(cfg, steps: int, device: torch.device) -> float:
    """Steps per second of the plainest loop that trains the same thing."""
    ds = build_dataset(cfg.data, "train")
    torch.manual_seed(cfg.run.seed)
    objective = build_objective(cfg, data_info(ds))
    objective.nets.to(device).train()
    opts = {n: make_optimizer(cfg, n, net) for n, net in objective.nets.items()}
    images = ds.images.to(device)
    labels = ds.labels.to(device)
    schedule = objective.schedule()

    def one_step():
        for phase in schedule:
            for _ in range(phase.repeats):
                idx = torch.randint(len(images), (cfg.train.batch_size,), device=device)
                batch = Batch(to_float(images[idx]), labels[idx])
                loss = objective.loss(phase.name, None if phase.data == "none" else batch,
                                      cfg.train.batch_size)["loss"]
                for n in phase.players:
                    opts[n].zero_grad(set_to_none=True)
                loss.backward()
                for n in phase.players:
                    opts[n].step()

    for _ in range(max(5, steps // 10)):  # warm-up
        one_step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync(device)
    return steps / (time.perf_counter() - t)


def trainer_loop(cfg, steps: int) -> float:
    """Steps per second of arena.trainer.train, from its own log of the timed windows."""
    warm = max(5, steps // 10)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.run.dir = tmp
        cfg.train.steps = warm + steps
        cfg.train.log_every = warm
        cfg.train.checkpoint_every = cfg.train.sample_every = 10**9  # only at the very end
        cfg.train.progress = False
        train(cfg)
        lines = [json.loads(line) for line in open(f"{tmp}/metrics.jsonl")]
    # windows after the warm-up one, each rate weighted by its length
    windows = [(b["step"] - a["step"], b["steps_per_s"]) for a, b in zip(lines, lines[1:])]
    return sum(n for n, _ in windows) / sum(n / rate for n, rate in windows)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="nsgan_cp_digits")
    parser.add_argument("--steps", type=count_arg(1), default=200)
    parser.add_argument("--repeats", type=count_arg(1), default=2, help="alternate the two loops this many times")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bare, ours = [], []
    try:  # an unknown config or override, a dataset not on disk: a message, not a traceback
        for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
            bare.append(bare_loop(load_config(args.config, args.overrides), args.steps, device))
            ours.append(trainer_loop(load_config(args.config, args.overrides), args.steps))
    except ConfigError as err:
        return cli_error(err)
    b, o = max(bare), max(ours)
    print(f"device {device}, config {args.config}, {args.steps} timed steps, best of {args.repeats}")
    print(f"bare loop : {b:8.2f} steps/s")
    print(f"trainer   : {o:8.2f} steps/s")
    print(f"overhead  : {100 * (b / o - 1):+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
