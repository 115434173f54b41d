"""The cost of train.monitor at its default interval, as a share of training time.

    python benchmarks/monitor_overhead.py                       # dim_l_digits and a CIFAR-sized DIM
    python benchmarks/monitor_overhead.py --steps 40 --repeats 3 --device cpu
    python benchmarks/monitor_overhead.py --configs dim_l_digits --every 500

For each config, in one process: the trainer's own step time (steps_per_s of the logged
rows after the first, so start-up is left out) over --steps steps with the monitor off,
then one measurement of the monitor (the median of --repeats, after one warm-up that
loads the images onto the device) on the trained encoder at the config's monitor
settings. The share of training time is

    monitor / (every * step + monitor)

with `every` = train.monitor.every (its default unless --every). The CIFAR-sized config
is dim_l_jsd_cifar10; without CIFAR-10 under data.root it runs on data.name=shapes at
32 px (4096 train / 1024 test images: the bank is capped at 4096) and says so.
Target: under 5% on both.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from arena.config import load_config
from arena.data import build_dataset
from arena.registry import ConfigError, cli_error
from arena.trainer import train
from eval.cli_args import count_arg
from eval.monitor import Monitor

CONFIGS = ("dim_l_digits", "dim_l_jsd_cifar10")
SHAPES_32 = ["data.name=shapes", "data.resolution=32", "data.root="]


def config_for(name: str, run_dir: str, steps: int, extra: list[str]) -> tuple:
    """(cfg, note): a CIFAR config whose data is missing falls back to shapes at 32 px."""
    over = [f"run.dir={run_dir}", f"train.steps={steps}", f"train.log_every={max(1, steps // 4)}",
            f"train.checkpoint_every={steps}", "train.progress=false", *extra]
    cfg = load_config(name, over)
    note = f"{cfg.data.name} {cfg.data.resolution}px"
    try:
        build_dataset(cfg.data, "test")
    except ConfigError:
        cfg = load_config(name, [*over, *SHAPES_32])
        note = f"shapes 32px (no {name.split('_')[-1]} data here: synthetic stand-in)"
    return cfg, note


def step_seconds(run_dir: Path) -> float:
    """Seconds per step from the trainer's own rate, the first logged row left out."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in rows if "steps_per_s" in r][1:]
    return 1.0 / statistics.median(rates)


def measure(name: str, steps: int, repeats: int, every: int | None, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg, note = config_for(name, tmp, steps, extra)
        objective = train(cfg)
        step = step_seconds(Path(tmp))
        monitor = Monitor(cfg)
        device = objective.device
        monitor.measure(objective, device)  # warm-up: images onto the device, kernels chosen
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            values = monitor.measure(objective, device)
            times.append(time.perf_counter() - t)
        m = cfg.train.monitor
        every = every or m.every
        cost = statistics.median(times)
        return {"config": name, "data": note, "device": str(device), "step_s": step, "monitor_s": cost,
                "every": every, "bank": len(monitor.splits[0].labels), "queries": len(monitor.splits[1].labels),
                "layers": m.layers, "linear": m.linear, "share_pct": 100.0 * cost / (every * step + cost),
                "values": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated config names")
    parser.add_argument("--steps", type=count_arg(8), default=40, help="training steps timed per config")
    parser.add_argument("--repeats", type=count_arg(1), default=3, help="monitor measurements timed")
    parser.add_argument("--every", type=count_arg(1), default=None,
                        help="interval to price (default: train.monitor.every of the config)")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto",
                        help="auto: the GPU where there is one (as the trainer picks), cpu: the CPU")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every config, e.g. model.width=0.5")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the trainer's switch (arena.distributed.processes)
    try:
        for name in args.configs.split(","):
            r = measure(name, args.steps, args.repeats, args.every, args.overrides)
            print(f"{r['config']:>18} on {r['data']}, {r['device']}: step {r['step_s'] * 1e3:.1f} ms, monitor "
                  f"{r['monitor_s'] * 1e3:.0f} ms ({r['bank']} bank / {r['queries']} query images, layers "
                  f"{'+'.join(r['layers'])}{', linear' if r['linear'] else ''}); every {r['every']} steps: "
                  f"{r['share_pct']:.2f}% of training time", flush=True)
            print(json.dumps(r), flush=True)
    except ConfigError as err:
        return cli_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
