"""The alpha / beta (/ gamma) ablation of DIM (paper App. A.4, Figs. 9-10).

    python -m eval.ablation --config dim_l_digits --alpha 0,0.5,1 --beta 0,0.5,1 --steps 200 \
        --out runs/ablation/heatmap.png [--gamma 0,0.1] [--measures svm,ndm,mine,msssim] [override ...]
    python -m eval.ablation --config dim_l_celeba --measures svm --out fig10.png     (Figure 10)

Trains one short run per grid cell with arena.trainer.train and the overrides
objective.alpha / beta / gamma (plus any extra key=value overrides) into
RUNS_ROOT/<cell> (default runs/ablation/a<alpha>_b<beta>_g<gamma>), then probes each
cell's encoder (--measures, all four by default): linear SVM accuracy on Y (%), NDM on
Y without the sigmoid (nats; as Fig. 9), MINE I(X; Y) (nats) and the reconstruction A.4
discusses, the MS-SSIM of a decoder trained on the frozen Y (eval.probes.reconstruction).
On multi-label data (CelebA's 40 attributes, Fig. 10) the SVM is one binary probe per
attribute and gives three panels: the mean, minimum and maximum accuracy over the
attributes. Draws the heatmaps side by side (one row per gamma) with each cell's value
written in it and the best cell (highest accuracy / MINE / MS-SSIM, lowest NDM) framed;
writes the numbers to the same path with .json. A cell with
alpha = beta = 0 is not a DIM model (no MI term): it is skipped and drawn hatched.

Each cell goes through arena.runs.ensure_trained and eval.experiment: a finished cell
is reused (--retrain trains it again), a cell stopped short (SIGTERM, Ctrl-C) resumes
from its newest checkpoint when the command is rerun, a cell of other options trains
beside the old run; a measured cell is not probed again with the same settings (the
.json keeps the records of earlier calls with the same config, overrides, steps and
probe settings). Where the paper interpolated its heatmaps bilinearly, we show the grid
values themselves.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import experiment as X
from .cli_args import count_arg
from .figures import (add_common_args, check_objective, flags, heatmaps, main as run_main, number_list, point,
                      probe_point, probe_settings, sweep)

# (record key, panel title, which end is best, the --measures name that produces it)
METRICS = (("svm_y", "SVM accuracy on Y (%)", "max", "svm"),
           ("svm_y_min", "SVM on Y: worst attribute (%)", "max", "svm"),
           ("svm_y_max", "SVM on Y: best attribute (%)", "max", "svm"),
           ("ndm_y", "NDM on Y, no sigmoid (nats)", "min", "ndm"),
           ("mine_y", "MINE I(X; Y) (nats)", "max", "mine"),
           ("msssim_y", "MS-SSIM of a decoder on Y", "max", "msssim"))
MEASURES = ("svm", "ndm", "mine", "msssim")


def measure_list(s: str) -> list[str]:
    names = [v.strip() for v in s.split(",") if v.strip()]
    unknown = [v for v in names if v not in MEASURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown measure(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(MEASURES)}")
    return names


def cell_specs(args, gammas: list[float]):
    """One spec per (gamma, beta, alpha); alpha = beta = 0 (no MI term) has nothing to train."""
    specs = []
    for g in gammas:
        for b in args.beta:
            for a in args.alpha:
                name, cell = f"a{a:g}_b{b:g}_g{g:g}", {"alpha": a, "beta": b, "gamma": g}
                if a == 0 and b == 0:
                    specs.append(X.Spec(name, None, {**cell, "skipped": "alpha = beta = 0 has no MI term"}))
                else:
                    specs.append(point(args, name, [f"objective.alpha={a}", f"objective.beta={b}",
                                                     f"objective.gamma={g}"], cell))
    return specs


def measure(state, settings) -> dict:
    """The probes of settings (SVM, NDM, MINE, MS-SSIM) on Y of a cell's encoder at its last
    step; a multi-label SVM adds the worst and best attribute's accuracy."""
    results, step = probe_point(state, settings)
    record = {"run": str(state.run_dir), "step": step}
    if "svm" in results:
        svm = results["svm"]["y"]
        record.update(svm_y=svm["mean"], svm_y_std=svm["std"])
        if "min" in svm:  # one probe per attribute
            record.update(svm_y_min=svm["min"], svm_y_max=svm["max"], svm_y_attributes=svm["per_attribute"])
    if "ndm" in results:
        record.update(ndm_y=results["ndm"]["y"], ndm_sigmoid_y=results["ndm"]["sigmoid(y)"])
    for name in ("mine", "msssim"):
        if name in results:
            record[f"{name}_y"] = results[name]["y"]
    return record


def panels(cells: list[dict], measures) -> list[tuple[str, str, str]]:
    """The heatmaps to draw: every metric of the measures asked for that some cell has
    (the attribute extremes only on multi-label data), in METRICS' order."""
    shown = [(k, label, best) for k, label, best, m in METRICS
             if m in measures and any(c.get(k) is not None for c in cells)]
    if any(k == "svm_y_min" for k, _, _ in shown):
        shown = [(k, "SVM on Y: mean over attributes (%)" if k == "svm_y" else label, best)
                 for k, label, best in shown]
    return shown or [(k, label, best) for k, label, best, m in METRICS[:1]]


def grids(cells: list[dict], args, gammas: list[float]) -> list[list[tuple]]:
    """One row of panels per gamma: (title, values [beta, alpha], best end) of each metric."""
    rows = []
    for g in gammas:
        row = []
        for key, label, best in panels(cells, args.measures):
            grid = np.full((len(args.beta), len(args.alpha)), np.nan)
            for c in cells:
                if c["gamma"] == g and c.get(key) is not None:
                    grid[args.beta.index(c["beta"]), args.alpha.index(c["alpha"])] = c[key]
            row.append((label + (f", gamma {g:g}" if len(gammas) > 1 else ""), grid, best))
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a dim config (configs/NAME.yaml)")
    p.add_argument("--alpha", type=number_list(float), default=[0.0, 0.5, 1.0])
    p.add_argument("--beta", type=number_list(float), default=[0.0, 0.5, 1.0])
    p.add_argument("--gamma", type=number_list(float), default=None, help="default: the config's gamma")
    p.add_argument("--steps", type=count_arg(1), default=200, help="training steps per cell")
    p.add_argument("--measures", type=measure_list, default=list(MEASURES),
                   help=f"comma-separated subset of {','.join(MEASURES)} (one heatmap each; default all)")
    p.add_argument("--svm-runs", type=int, default=3)
    p.add_argument("--mine-steps", type=int, default=1000)
    p.add_argument("--ndm-steps", type=int, default=1000)
    p.add_argument("--msssim-epochs", type=int, default=30)
    p.add_argument("--retrain", action="store_true", help="train every cell again")
    add_common_args(p, "ablation", point="cell", out_required=True)
    return p


def _run(args, out) -> None:
    settings = probe_settings(args, probes=tuple(args.measures), layers=("y",), rep_layer="y",
                              mine_steps=args.mine_steps, ndm_steps=args.ndm_steps, msssim_epochs=args.msssim_epochs)
    base = check_objective(args, "dim", "the ablation")
    gammas = args.gamma if args.gamma is not None else [base.objective.gamma]
    probes = flags(args, "measures", "svm_runs", "mine_steps", "ndm_steps", "msssim_epochs", "max_train", "max_test")
    head = {**flags(args, "config", "overrides", "steps", "alpha", "beta"), "gamma": gammas, "probes": probes}
    title = f"DIM ablation: {args.config}, {args.steps} steps per cell" + (
        f" ({' '.join(args.overrides)})" if args.overrides else "")
    data = sweep("ablation", cell_specs(args, gammas), lambda state: measure(state, settings), head, out,
                 lambda cells: heatmaps(grids(cells, args, gammas), args.alpha, args.beta, out, title=title,
                                        xlabel="alpha (global)", ylabel="beta (local)"),
                 records=("cells", "cell"), compare=["config", "overrides", "steps", "probes"], measured_by=probes,
                 retrain=args.retrain)
    print(json.dumps({k: v for k, v in data.items() if k != "cells"} | {"cells": len(data["cells"])}))


def main(argv: list[str] | None = None) -> int:
    return run_main("ablation", build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
