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
import shutil
import sys
import time
from pathlib import Path


from arena import checkpoint as ckpt
from arena.config import load_config
from arena.registry import ConfigError

from . import experiment as X
from .cli_args import default_device, device_arg
from .dim_probes import ProbeSettings, load_encoder_run, log, run_probes

# (record key, panel title, which end is best, the --measures name that produces it)
METRICS = (("svm_y", "SVM accuracy on Y (%)", "max", "svm"),
           ("svm_y_min", "SVM on Y: worst attribute (%)", "max", "svm"),
           ("svm_y_max", "SVM on Y: best attribute (%)", "max", "svm"),
           ("ndm_y", "NDM on Y, no sigmoid (nats)", "min", "ndm"),
           ("mine_y", "MINE I(X; Y) (nats)", "max", "mine"),
           ("msssim_y", "MS-SSIM of a decoder on Y", "max", "msssim"))
MEASURES = ("svm", "ndm", "mine", "msssim")


def floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def measure_list(s: str) -> list[str]:
    names = [v.strip() for v in s.split(",") if v.strip()]
    unknown = [v for v in names if v not in MEASURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown measure(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(MEASURES)}")
    return names


def cell_name(a: float, b: float, g: float) -> str:
    return f"a{a:g}_b{b:g}_g{g:g}"


def probe_cell(state, settings: ProbeSettings) -> dict:
    """The probes of settings (SVM, NDM, MINE, MS-SSIM) on Y of a cell's encoder at its last
    step; a multi-label SVM adds the worst and best attribute's accuracy."""
    cfg, objective, step = load_encoder_run(state.run_dir, str(ckpt.final_dir(state.run_dir, state.steps)),
                                            settings.device)
    results, _ = run_probes(cfg, objective, settings)
    record = {"run": str(state.run_dir), "step": step}
    if "svm" in results:
        svm = results["svm"]["y"]
        record.update(svm_y=svm["mean"], svm_y_std=svm["std"])
        if "min" in svm:  # one probe per attribute
            record.update(svm_y_min=svm["min"], svm_y_max=svm["max"], svm_y_attributes=svm["per_attribute"])
    if "ndm" in results:
        record.update(ndm_y=results["ndm"]["y"], ndm_sigmoid_y=results["ndm"]["sigmoid(y)"])
    if "mine" in results:
        record["mine_y"] = results["mine"]["y"]
    if "msssim" in results:
        record["msssim_y"] = results["msssim"]["y"]
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


def draw(cells: list[dict], alphas: list[float], betas: list[float], gammas: list[float], out: Path,
         title: str, measures=MEASURES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    shown = panels(cells, measures)
    fig, axes = plt.subplots(len(gammas), len(shown), squeeze=False,
                             figsize=(3.6 * len(shown), 3.0 * len(gammas) + 0.6))
    for r, g in enumerate(gammas):
        for c, (key, label, best) in enumerate(shown):
            ax = axes[r][c]
            grid = np.full((len(betas), len(alphas)), np.nan)
            for cell in cells:
                if cell["gamma"] == g and cell.get(key) is not None:
                    grid[betas.index(cell["beta"]), alphas.index(cell["alpha"])] = cell[key]
            # NDM: lower is better, so reverse the colours to keep "bright = good".
            cmap = plt.get_cmap("viridis_r" if best == "min" else "viridis").with_extremes(bad="lightgrey")
            im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap=cmap, aspect="auto")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
            ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
            ax.set_xlabel("alpha (global)")
            ax.set_ylabel("beta (local)")
            ax.set_title(f"{label}" + (f", gamma {g:g}" if len(gammas) > 1 else ""), fontsize=9)
            finite = np.isfinite(grid)
            for i in range(len(betas)):
                for j in range(len(alphas)):
                    if finite[i, j]:
                        ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=8, color="w",
                                path_effects=_outline())
                    else:
                        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                               edgecolor="grey", lw=0))
                        ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="dimgrey")
            if finite.any():
                flat = np.where(finite, grid, np.inf if best == "min" else -np.inf)
                i, j = np.unravel_index(flat.argmin() if best == "min" else flat.argmax(), grid.shape)
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _outline():
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2, foreground="black")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a dim config (configs/NAME.yaml)")
    p.add_argument("--alpha", type=floats, default=[0.0, 0.5, 1.0])
    p.add_argument("--beta", type=floats, default=[0.0, 0.5, 1.0])
    p.add_argument("--gamma", type=floats, default=None, help="default: the config's gamma")
    p.add_argument("--steps", type=int, default=200, help="training steps per cell")
    p.add_argument("--out", required=True, help="heatmap PNG (numbers go to the same name with .json)")
    p.add_argument("--runs-root", default="runs/ablation", help="cells train into RUNS_ROOT/<cell>")
    p.add_argument("--measures", type=measure_list, default=list(MEASURES),
                   help=f"comma-separated subset of {','.join(MEASURES)} (one heatmap each; default all)")
    p.add_argument("--svm-runs", type=int, default=3)
    p.add_argument("--mine-steps", type=int, default=1000)
    p.add_argument("--ndm-steps", type=int, default=1000)
    p.add_argument("--msssim-epochs", type=int, default=30)
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--max-test", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="train every cell again")
    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. model.mi_units=256")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return X.run_cli("ablation", lambda: _run(args))


def cell_specs(args, gammas: list[float]) -> list[X.Spec]:
    specs = []
    for g in gammas:
        for b in args.beta:
            for a in args.alpha:
                name = cell_name(a, b, g)
                cfg = None if a == 0 and b == 0 else load_config(args.config, [
                    *args.overrides, f"objective.alpha={a}", f"objective.beta={b}", f"objective.gamma={g}",
                    f"train.steps={args.steps}", f"run.dir={Path(args.runs_root) / name}",
                    f"train.checkpoint_every={args.steps}", "train.progress=false"])
                specs.append(X.Spec(name, cfg, {"alpha": a, "beta": b, "gamma": g}))
    return specs


def _run(args) -> int:
    out = X.output_file(args.out, "--out")
    t0 = time.perf_counter()
    # the probes' flags are checked before any cell trains
    settings = ProbeSettings(probes=tuple(args.measures), layers=("y",), rep_layer="y", runs=args.svm_runs,
                             mine_steps=args.mine_steps, ndm_steps=args.ndm_steps, msssim_epochs=args.msssim_epochs,
                             max_train=args.max_train, max_test=args.max_test, device=args.device)
    settings.check(flags={"runs": "--svm-runs"})
    base = load_config(args.config, args.overrides)
    if base.objective.name != "dim":
        raise ConfigError(f"--config: the ablation varies DIM's alpha/beta/gamma; {args.config} trains "
                          f"'{base.objective.name}'")
    gammas = args.gamma if args.gamma is not None else [base.objective.gamma]
    specs = cell_specs(args, gammas)
    probes = {"measures": args.measures, "svm_runs": settings.runs,
              **{k: getattr(settings, k) for k in ("mine_steps", "ndm_steps", "msssim_epochs", "max_train",
                                                   "max_test")}}
    head = {"config": args.config, "overrides": args.overrides, "steps": args.steps, "alpha": args.alpha,
            "beta": args.beta, "gamma": gammas, "probes": probes}
    results = X.Results(out.with_suffix(".json"), head, field="cells", key="cell",
                        compare=["config", "overrides", "steps", "probes"], say=log, command="eval.ablation")
    if args.retrain:
        for spec in specs:
            if spec.cfg is not None and Path(spec.cfg.run.dir).exists():
                shutil.rmtree(spec.cfg.run.dir)
    for spec in specs:
        if spec.cfg is None:
            log(f"{spec.key}: alpha = beta = 0 has no MI term; skipped")
            results.put(spec.key, {**spec.record, "skipped": "alpha = beta = 0"}, log)
    X.run_specs([s for s in specs if s.cfg is not None],
                lambda spec, state, procs: probe_cell(state, settings) if procs.main else None, results,
                measure_key=lambda spec, state: {"run_dir": str(state.run_dir), "step": state.steps, **probes},
                say=log)
    cells = [results.records[s.key] for s in specs if s.key in results.records]
    record = {**results.write(), "cells": cells, "wall_seconds": round(time.perf_counter() - t0, 1)}
    draw(cells, args.alpha, args.beta, gammas, out,
         f"DIM ablation: {args.config}, {args.steps} steps per cell"
         + (f" ({' '.join(args.overrides)})" if args.overrides else ""), args.measures)
    print(json.dumps({k: v for k, v in record.items() if k != "cells"} | {"cells": len(cells)}))
    log(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
