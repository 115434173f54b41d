"""The one sweep layer under the DIM figure commands (eval.figure8, eval.figure12 and
eval.ablation for Figures 9 / 10), which state only their points, measure and plot. Here:
the shared flags and wiring, a point's spec (--config with a few overrides, trained into
RUNS_ROOT/<point>), the probes of a point's run at its last step, the sweep through
eval.experiment with its results file, and the plots (lines, heatmaps).
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import textwrap
import time
from pathlib import Path

from arena import checkpoint as ckpt
from arena.config import load_config
from arena.distributed import processes
from arena.registry import ConfigError

from . import experiment as X
from .cli_args import count_arg, default_device, device_arg
from .dim_probes import ProbeSettings, load_encoder_run, run_probes

RERUN = """\
Each {point} goes through arena.runs.ensure_trained and eval.experiment: a finished run is
reused, a run stopped short (SIGTERM, Ctrl-C) resumes from its newest checkpoint when the
command is rerun, a run of other options trains beside the old one; a {point} measured
with the same settings is not measured again (OUT.json keeps the records of earlier calls
with the same config, overrides, steps and measure settings)."""


def number_list(kind, choices=None):
    """An argparse type: comma-separated values of `kind` (int, float, str), at least one,
    each one of `choices` when given."""
    def parse(text: str) -> list:
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        unknown = [str(v) for v in values if choices is not None and v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        return values
    return parse


def add_common_args(p: argparse.ArgumentParser, name: str, point: str = "point", out_required: bool = False):
    """The flags every sweep command has after its own (probe subsets, where runs and output
    go, the device, the config overrides) and, closing its --help, how a rerun goes on. -> p"""
    p.epilog = RERUN.format(point=point)
    common = p.add_argument_group("every sweep command's options")
    common.add_argument("--max-train", type=count_arg(0), default=0, help="probe on a random subset (0: all)")
    common.add_argument("--max-test", type=count_arg(0), default=0)
    common.add_argument("--runs-root", default=f"runs/{name}", help=f"each {point} trains into RUNS_ROOT/<{point}>")
    common.add_argument("--out", required=out_required, default=None if out_required else f"{name}.png",
                        help="the PNG; the numbers go beside it (.json" + (")" if out_required else ", .md)"))
    common.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("overrides", nargs="*", help=f"config overrides for every {point} (KEY=VALUE)")
    return p


def main(name: str, parser: argparse.ArgumentParser, run, argv: list[str] | None) -> int:
    """A sweep command: argv parsed (the config overrides may come anywhere), --out checked,
    then run(args, out) under the core's endings and exit codes (eval.experiment.run_cli)."""
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        run(args, X.output_file(args.out, "--out"))
        return 0
    return X.run_cli(name, body)


def check_objective(args, objective: str, figure: str):
    """The config of --config and the overrides when it trains `objective`, else a
    ConfigError before any point."""
    cfg = load_config(args.config, args.overrides)
    if cfg.objective.name != objective:
        raise ConfigError(f"--config: {figure} sweeps options of '{objective}'; {args.config} trains "
                          f"'{cfg.objective.name}'")
    return cfg


def point(args, name: str, overrides: list[str], record: dict, measures: str = "") -> X.Spec:
    """One sweep point: --config with the command's overrides, then the point's, trained into
    RUNS_ROOT/name; a --steps > 0 sets the length, checkpointed once at the end."""
    length = [f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}"] if args.steps else []
    cfg = load_config(args.config, [*args.overrides, *overrides, *length, f"run.dir={Path(args.runs_root) / name}",
                                    "train.progress=false"])
    return X.Spec(name, cfg, record, measures)


def probe_settings(args, **own) -> ProbeSettings:
    """The probes' settings of --svm-runs, --max-train, --max-test, --device and the command's
    own, checked before any point trains (a bad count is named by the command's flag)."""
    s = ProbeSettings(runs=args.svm_runs, max_train=args.max_train, max_test=args.max_test, device=args.device, **own)
    s.check(flags={"runs": "--svm-runs"})
    return s


def final_encoder(state, device: str):
    """(cfg, objective, step) of a point's run at the checkpoint of its last step."""
    return load_encoder_run(state.run_dir, str(ckpt.final_dir(state.run_dir, state.steps)), device)


def probe_point(state, settings: ProbeSettings) -> tuple[dict, int]:
    """eval.dim_probes' probes on a point's encoder at its last step -> (results, step)."""
    cfg, objective, step = final_encoder(state, settings.device)
    return run_probes(cfg, objective, settings)[0], step


def flags(args, *names: str) -> dict:
    """{name: the flag's value}: the settings a results file's records depend on."""
    return {n: getattr(args, n) for n in names}


def command_log(name: str):
    """The command's progress lines on stderr, each prefixed with [name]."""
    return lambda msg: print(f"[{name}] {msg}", file=sys.stderr, flush=True)


def sweep(name: str, specs: list[X.Spec], measure, head: dict, out: Path, plot, *, render=None,
          records=("points", "key"), compare=None, measured_by: dict | None = None, retrain=False) -> dict:
    """Train (or reuse, or resume) every spec through eval.experiment, measure(state) each on
    the main process, then plot(these specs' records) and say what was written. records:
    OUT.json's field of records and the key that names one (OUT.md too with `render`).
    Earlier records are kept when head equals this one in `compare` (default: all of head);
    a point measured with the same run, step and `measured_by` (default: head) is not
    measured again. A spec without a config is recorded, not trained: its record says why
    ('skipped'). retrain: every run directory is removed first.
    -> OUT.json's data, with these specs' records and wall_seconds."""
    t0 = time.perf_counter()
    log = command_log(name)
    field, key = records
    results = X.Results(out.with_suffix(".json"), head, field=field, key=key, render=render, compare=compare,
                        say=log, command=f"eval.{name}")
    procs = processes()  # the main process alone removes runs, writes and draws
    if procs.main:
        for spec in specs:
            if spec.cfg is None:
                log(f"{spec.key}: {spec.record['skipped']}; skipped")
                results.put(spec.key, spec.record, log)
            elif retrain and Path(spec.cfg.run.dir).exists():
                shutil.rmtree(spec.cfg.run.dir)
    procs.barrier()  # no process plans a run before its old directory is gone
    depends = head if measured_by is None else measured_by
    trained = [s for s in specs if s.cfg is not None]
    X.run_specs(trained, lambda spec, state, _: measure(state) if procs.main else None, results,
                measure_key=lambda spec, state: {"run_dir": str(state.run_dir), "step": state.steps, **depends},
                say=log)
    data = results.write() if procs.main else results.data()
    data[field] = [results.records[s.key] for s in specs if s.key in results.records]
    if procs.main:
        plot(data[field])
        files = [str(p) for p in (out, results.path, results.md) if p is not None]
        log(f"wrote {', '.join(files[:-1])} and {files[-1]} ({time.perf_counter() - t0:.0f}s)")
    return {**data, "wall_seconds": round(time.perf_counter() - t0, 1)}


def spread(values: list[float]) -> dict:
    """mean, sample std (0 for one value), min, max and n of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": len(vals)}


def group(records: list[dict], label, x: str, values) -> dict[str, list[tuple[float, list[float]]]]:
    """line_plot's series of records: {label(r): [(r[x], [values(r) of every r there]), ...]}
    with x ascending; a record without values (not measured) is left out."""
    out: dict[str, dict[float, list[float]]] = {}
    for r in records:
        if values(r):
            out.setdefault(label(r), {}).setdefault(r[x], []).extend(values(r))
    return {name: sorted(points.items()) for name, points in out.items()}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    _pyplot().close(fig)


def line_plot(series: dict[str, list[tuple[float, list[float]]]], out: Path, *, xlabel: str, ylabel: str,
              title: str, log2_x: bool = False, symlog_y: bool = False) -> None:
    """One line per series through the mean at each x, error bars of +-1 std, and every
    single measurement as a faint dot. series: {label: [(x, [values]), ...]}. symlog_y:
    a y axis linear in [-1, 1] and logarithmic beyond (values spanning decades, some <= 0)."""
    fig, ax = _pyplot().subplots(figsize=(5.2, 3.8))
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
        lo, hi = ax.get_ylim()  # plain-number ticks: matplotlib labels the linear part [-1, 1] only at 0
        ticks = [t for t in (-100, -10, -1, -0.5, 0, 0.5, 1, 10, 100, 1000) if lo <= t <= hi]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    _save(fig, out)


def heatmaps(rows: list[list[tuple[str, dict, str]]], xs: list[float], ys: list[float], out: Path, *,
             xlabel: str, ylabel: str, title: str) -> None:
    """Rows of heatmap panels (label, {(x, y): value}, the best end: 'min' or 'max'), x across
    and y up: each value written in its cell, a missing one hatched 'n/a', the best one
    framed in red. Bright is good on every panel."""
    import numpy as np
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(rows[0]), squeeze=False,
                             figsize=(3.6 * len(rows[0]), 3.0 * len(rows) + 0.6))
    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    for ax, (label, values, best) in zip(axes.flat, [panel for row in rows for panel in row]):
        grid = np.array([[values.get((x, y), np.nan) for x in xs] for y in ys], dtype=float)
        grid[~np.isfinite(grid)] = np.nan
        # lower is better for 'min' (NDM): the colours reversed keep "bright = good"
        cmap = plt.get_cmap("viridis_r" if best == "min" else "viridis").with_extremes(bad="lightgrey")
        fig.colorbar(ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap=cmap, aspect="auto"), ax=ax,
                     fraction=0.046, pad=0.04)
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.set_title(label, fontsize=9)
        for (i, j), value in np.ndenumerate(grid):
            if np.isnan(value):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="grey", lw=0))
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="dimgrey")
            else:
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=8, color="w", path_effects=outline)
        if not np.isnan(grid).all():
            i, j = np.unravel_index(np.nanargmin(grid) if best == "min" else np.nanargmax(grid), grid.shape)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    fig.suptitle(textwrap.fill(title, 40 * len(rows[0])), fontsize=10)  # wrapped to the panels' width
    _save(fig, out)
