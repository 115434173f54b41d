"""What the line-plot figures (eval.figure8, eval.figure12) share: list flags, the run
config of one point of a sweep, the mean and spread of repeated measurements, and the plot.

A sweep point is the command's --config with a few overrides, trained into
RUNS_ROOT/<point> through eval.experiment (arena.runs.ensure_trained decides whether it
trains, resumes or is reused), so a rerun of the same command skips what is done.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from arena.config import load_config
from arena.registry import ConfigError

from . import experiment as X
from .cli_args import count_arg, default_device, device_arg
from .dim_probes import log


def number_list(kind):
    """An argparse type: comma-separated values of `kind` (int or float), at least one."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    return parse


def check_objective(config: str, overrides: list[str], objective: str, figure: str) -> None:
    """--config (with the overrides) trains `objective`, or a ConfigError before any point."""
    name = load_config(config, overrides).objective.name
    if name != objective:
        raise ConfigError(f"--config: {figure} sweeps options of '{objective}'; {config} trains '{name}'")


def point_config(config: str, overrides: list[str], point: list[str], steps: int | None, run_dir: Path):
    """The config of one sweep point: the command's overrides, then the point's, a run
    directory of its own and (with `steps`) the length, checkpointed once at the end."""
    length = [f"train.steps={steps}", f"train.checkpoint_every={steps}"] if steps else []
    return load_config(config, [*overrides, *point, *length, f"run.dir={run_dir}", "train.progress=false"])


def add_common_args(p: argparse.ArgumentParser, name: str) -> None:
    """The flags every figure command has after its own: probe subsets, where runs and
    output go, the device, and the config overrides."""
    p.add_argument("--max-train", type=count_arg(0), default=0, help="probe on a random subset (0: all)")
    p.add_argument("--max-test", type=count_arg(0), default=0)
    p.add_argument("--runs-root", default=f"runs/{name}", help="each point trains into RUNS_ROOT/<point>")
    p.add_argument("--out", default=f"{name}.png", help="the PNG; the numbers go beside it (.json, .md)")
    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("overrides", nargs="*", help="config overrides for every point (KEY=VALUE)")


def sweep(name: str, specs: list[X.Spec], measure, head: dict, out: Path, render) -> list[dict]:
    """Train (or reuse / resume) and measure every spec through eval.experiment, records in
    OUT.json and OUT.md; a point measured before with the same head is kept. `measure(state)`
    runs on the main process. -> the records of these specs, in their order."""
    results = X.Results(out.with_suffix(".json"), head, field="points", render=render, say=log,
                        command=f"eval.{name}")
    X.run_specs(specs, lambda spec, state, procs: measure(state) if procs.main else None, results,
                measure_key=lambda spec, state: {"run_dir": str(state.run_dir), "step": state.steps, **head},
                say=log)
    results.write()
    return [results.records[s.key] for s in specs if s.key in results.records]


def spread(values: list[float]) -> dict:
    """mean, sample std (0 for one value), min, max and n of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": len(vals)}


def line_plot(series: dict[str, list[tuple[float, list[float]]]], out: Path, *, xlabel: str, ylabel: str,
              title: str, log2_x: bool = False, symlog_y: bool = False) -> None:
    """One line per series through the mean at each x, error bars of +-1 std, and every
    single measurement as a faint dot. series: {label: [(x, [values]), ...]}. symlog_y:
    a y axis linear in [-1, 1] and logarithmic beyond (values spanning decades, some <= 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for label, points in series.items():
        points = sorted((x, v) for x, v in points if v)
        if not points:
            continue
        xs = [x for x, _ in points]
        stats = [spread(v) for _, v in points]
        line = ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o",
                           capsize=3, label=label)
        for x, v in points:
            ax.scatter([x] * len(v), v, s=8, alpha=0.35, color=line[0].get_color())
    if log2_x:
        ax.set_xscale("log", base=2)
    if symlog_y:
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
