"""Curves of one or more runs from their metrics.jsonl, overlaid, one panel per metric.

    python -m eval.plot_run --run runs/dim_l_digits --out curves.png
    python -m eval.plot_run --run runs/ie_digits --run runs/wgan_gp_digits --metrics 'fid|loss' --out cmp.png

Every numeric value logged with a step is a curve: the trainer's losses and logged
values (MI estimates, prior terms), FID/IS/KID over steps, probe results (nested
values are named by their path, e.g. svm/y/mean; a probe's settings are left out). Lines that are not JSON objects
(a file cut off mid-write, a stray line) and non-numeric values are skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from arena.images import atomic_file
from arena.registry import ConfigError, cli_error

# Keys of a metrics row that are not values over steps: the x axis, and the settings
# a probe record carries along (eval.dim_probes).
NOT_VALUES = ("step", "settings")


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON object by path: {"svm": {"y": 71.2}} -> {"svm/y": 71.2};
    booleans, strings, lists and non-finite numbers are left out."""
    out: dict[str, float] = {}
    for k, v in record.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The JSON objects of RUN/metrics.jsonl in order; other lines are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"--run: {path} not found (the trainer writes it at each log step)")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def curves(rows: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """metric -> (steps, values) from rows that carry a numeric step."""
    out: dict[str, tuple[list, list]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        for name, v in flatten({k: v for k, v in row.items() if k not in NOT_VALUES}).items():
            xs, ys = out.setdefault(name, ([], []))
            xs.append(float(step))
            ys.append(v)
    return out


def plot_runs(runs: list[str | Path], out: str | Path, metrics: str | None = None, cols: int = 3) -> list[str]:
    """Draw every metric of `runs` (those matching the regex `metrics`) into the PNG `out`;
    -> the metric names drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()  # savefig picks the format from the suffix
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix and suffix not in kinds:
        raise ConfigError(f"--out: {out}: matplotlib writes no '.{suffix}' files; use one of {', '.join(sorted(kinds))}")
    try:
        pattern = re.compile(metrics) if metrics else None
    except re.error as e:
        raise ConfigError(f"--metrics: not a regular expression ({e})") from None
    per_run = {str(r): curves(read_metrics(r)) for r in runs}
    names = sorted({n for c in per_run.values() for n in c if pattern is None or pattern.search(n)})
    if not names:
        which = f" matching '{metrics}'" if metrics else ""
        raise ConfigError(f"--run: no numeric metrics{which} with a step in {', '.join(map(str, runs))}")
    cols = min(cols, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    labels = disambiguate(list(per_run))
    for ax, name in zip(axes.flat, names):
        for i, (run, label) in enumerate(zip(per_run, labels)):
            if name in per_run[run]:  # a run keeps its colour in every panel, present there or not
                xs, ys = per_run[run][name]
                ax.plot(xs, ys, marker="o" if len(xs) <= 20 else None, ms=3, lw=1.2, label=label, color=f"C{i % 10}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    if len(runs) > 1:
        legend = {}  # label -> line, from whichever panels hold the run
        for ax in axes.flat:
            for line, text in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(text, line)
        shown = [label for label in labels if label in legend]  # in the order of --run
        fig.legend([legend[label] for label in shown], shown, loc="upper center", ncol=min(len(runs), 4), fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.0 * rows)))
    else:
        fig.suptitle(labels[0], fontsize=11)
        fig.tight_layout()
    try:
        with atomic_file(out) as tmp:  # same suffix: matplotlib picks the format from it
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return names


def disambiguate(runs: list[str]) -> list[str]:
    """Legend labels: each run's folder name, or its whole path where two names collide."""
    names = [Path(r).name or r for r in runs]
    return [n if names.count(n) == 1 else r for n, r in zip(names, runs)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.plot_run", description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", required=True, help="run directory (repeat to overlay runs)")
    p.add_argument("--metrics", default=None, help="regular expression: only the metrics it matches")
    p.add_argument("--cols", type=int, default=3, help="panels per row")
    p.add_argument("--out", required=True, help="image file to write (PNG, or any format matplotlib knows)")
    args = p.parse_args(argv)
    try:
        if args.cols < 1:
            raise ConfigError(f"--cols must be >= 1, got {args.cols}")
        if Path(args.out).is_dir():
            raise ConfigError(f"--out: {args.out} is a directory; give the image file to write")
        try:
            names = plot_runs(args.run, args.out, args.metrics, args.cols)
        except ImportError:
            raise ConfigError("eval.plot_run needs matplotlib: pip install matplotlib "
                              "(or the toolkit's [plots] extra)") from None
        except OSError as e:
            raise ConfigError(f"--out: cannot write {args.out}: {e.strerror or e}") from None
    except ConfigError as e:
        return cli_error(e)
    print(f"wrote {args.out} ({len(names)} metric(s), {len(args.run)} run(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
