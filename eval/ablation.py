r"""The alpha / beta (/ gamma) ablation of DIM (paper App. A.4, Figs. 9-10).

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
writes the numbers to the same path with .json. A cell with alpha = beta = 0 is not a
DIM model (no MI term): it is skipped and drawn hatched. --retrain trains every cell
again. Where the paper interpolated its heatmaps bilinearly, we show the grid values
themselves.
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import product

from arena.distributed import processes

from . import experiment as X
from . import figures as F
from .cli_args import count_arg

# (record key, panel title, which end is best, the --measures name that produces it)
METRICS = (("svm_y", "SVM accuracy on Y (%)", "max", "svm"),
           ("svm_y_min", "SVM on Y: worst attribute (%)", "max", "svm"),
           ("svm_y_max", "SVM on Y: best attribute (%)", "max", "svm"),
           ("ndm_y", "NDM on Y, no sigmoid (nats)", "min", "ndm"),
           ("mine_y", "MINE I(X; Y) (nats)", "max", "mine"),
           ("msssim_y", "MS-SSIM of a decoder on Y", "max", "msssim"))
MEASURES = ("svm", "ndm", "mine", "msssim")


def cell_specs(args, gammas: list[float]) -> list[X.Spec]:
    """One spec per (gamma, beta, alpha); alpha = beta = 0 (no MI term) has nothing to train."""
    specs = []
    for g, b, a in product(gammas, args.beta, args.alpha):
        name, cell = f"a{a:g}_b{b:g}_g{g:g}", {"alpha": a, "beta": b, "gamma": g}
        if a == 0 and b == 0:
            specs.append(X.Spec(name, None, {**cell, "skipped": "alpha = beta = 0 has no MI term"}))
        else:
            specs.append(F.point(args, name, [f"objective.alpha={a}", f"objective.beta={b}", f"objective.gamma={g}"],
                                 cell))
    return specs


def measure(state, settings) -> dict:
    """The probes of settings (SVM, NDM, MINE, MS-SSIM) on Y of a cell's encoder at its last
    step; a multi-label SVM adds the worst and best attribute's accuracy."""
    results, step = F.probe_point(state, settings)
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


def plot(cells: list[dict], args, gammas: list[float], out) -> None:
    """The heatmaps: one row per gamma, one panel per metric, alpha across and beta up."""
    rows = []
    for g in gammas:
        here = [c for c in cells if c["gamma"] == g]
        suffix = f", gamma {g:g}" if len(gammas) > 1 else ""
        rows.append([(label + suffix, {(c["alpha"], c["beta"]): c[key] for c in here if c.get(key) is not None}, best)
                     for key, label, best in panels(cells, args.measures)])
    title = f"DIM ablation: {args.config}, {args.steps} steps per cell" + (
        f" ({' '.join(args.overrides)})" if args.overrides else "")
    F.heatmaps(rows, args.alpha, args.beta, out, xlabel="alpha (global)", ylabel="beta (local)", title=title)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a dim config (configs/NAME.yaml)")
    p.add_argument("--alpha", type=F.number_list(float), default=[0.0, 0.5, 1.0])
    p.add_argument("--beta", type=F.number_list(float), default=[0.0, 0.5, 1.0])
    p.add_argument("--gamma", type=F.number_list(float), default=None, help="default: the config's gamma")
    p.add_argument("--steps", type=count_arg(1), default=200, help="training steps per cell")
    p.add_argument("--measures", type=F.number_list(str, MEASURES), default=list(MEASURES),
                   help=f"comma-separated subset of {','.join(MEASURES)} (one heatmap each; default all)")
    p.add_argument("--svm-runs", type=int, default=3)
    p.add_argument("--mine-steps", type=int, default=1000)
    p.add_argument("--ndm-steps", type=int, default=1000)
    p.add_argument("--msssim-epochs", type=int, default=30)
    p.add_argument("--retrain", action="store_true", help="train every cell again")
    return F.add_common_args(p, "ablation", point="cell", out_required=True)


def _run(args, out) -> None:
    settings = F.probe_settings(args, probes=tuple(args.measures), layers=("y",), rep_layer="y",
                                mine_steps=args.mine_steps, ndm_steps=args.ndm_steps,
                                msssim_epochs=args.msssim_epochs)
    base = F.check_objective(args, "dim", "the ablation")
    gammas = args.gamma or [base.objective.gamma]
    probes = F.flags(args, "measures", "svm_runs", "mine_steps", "ndm_steps", "msssim_epochs", "max_train",
                     "max_test")
    head = {**F.flags(args, "config", "overrides", "steps", "alpha", "beta"), "gamma": gammas, "probes": probes}
    data = F.sweep("ablation", cell_specs(args, gammas), lambda state: measure(state, settings), head, out,
                   lambda cells: plot(cells, args, gammas, out),
                   records=("cells", "cell"), compare=["config", "overrides", "steps", "probes"],
                   measured_by=probes, retrain=args.retrain)
    if processes().main:
        print(json.dumps({k: v for k, v in data.items() if k != "cells"} | {"cells": len(data["cells"])}))


def main(argv: list[str] | None = None) -> int:
    return F.main("ablation", build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
