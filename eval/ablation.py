"""The alpha / beta (/ gamma) ablation of DIM (paper App. A.4, Figs. 9-10).

    python -m eval.ablation --config dim_l_digits --alpha 0,0.5,1 --beta 0,0.5,1 --steps 200 \
        --out runs/ablation/heatmap.png [--gamma 0,0.1] [override ...]

Trains one short run per grid cell with arena.trainer.train and the overrides
objective.alpha / beta / gamma (plus any extra key=value overrides) into
RUNS_ROOT/<cell> (default runs/ablation/a<alpha>_b<beta>_g<gamma>), then probes each
cell's encoder: linear SVM accuracy on Y (%), NDM on Y without the sigmoid (nats; as
Fig. 9) and MINE I(X; Y) (nats). Draws the three heatmaps side by side (one row per
gamma) with each cell's value written in it and the best cell (highest accuracy / MINE,
lowest NDM) framed; writes the numbers to the same path with .json. A cell with
alpha = beta = 0 is not a DIM model (no MI term): it is skipped and drawn hatched.

A cell whose run directory already holds a checkpoint of --steps steps is not trained
again (delete the directory, or pass --retrain, to redo it); a cell stopped short of
--steps (SIGTERM, Ctrl-C) resumes from its newest checkpoint; a cell trained for another
--steps is refused (pass --retrain). Where the paper
interpolated its heatmaps bilinearly, we show the grid values themselves.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from arena import checkpoint as ckpt
from arena.config import load_config
from arena.registry import ConfigError, cli_error
from arena.trainer import NonFiniteLoss, train

from .dim_probes import ProbeSettings, load_encoder_run, log, run_probes

METRICS = (("svm_y", "SVM accuracy on Y (%)", "max"), ("ndm_y", "NDM on Y, no sigmoid (nats)", "min"),
           ("mine_y", "MINE I(X; Y) (nats)", "max"))


def floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def cell_name(a: float, b: float, g: float) -> str:
    return f"a{a:g}_b{b:g}_g{g:g}"


def has_checkpoint(run_dir: Path, steps: int) -> bool:
    return any(p.name == f"checkpoint-{steps:06d}" for p in ckpt.checkpoint_dirs(run_dir)) \
        if (run_dir / "checkpoints").is_dir() else False


def resume_point(run_dir: Path, steps: int) -> str:
    """run.resume for a cell that has no checkpoint of `steps` steps: '' when it has none at
    all, 'latest' when a run of `steps` steps stopped short; a run planned for another
    number of steps is refused (continuing it would mix two step counts in one cell)."""
    found = ckpt.checkpoint_dirs(run_dir)
    if not found:
        return ""
    import yaml

    saved = run_dir / "config.yaml"
    planned = (yaml.safe_load(saved.read_text()) or {}).get("train", {}).get("steps") if saved.is_file() else None
    if planned == steps and ckpt.step_of(found[-1]) < steps:
        return "latest"
    raise ConfigError(f"{run_dir} holds a run planned for {planned} steps (newest {found[-1].name}), not for "
                      f"--steps {steps}; pass --retrain to train the cell again, or another --runs-root")


def run_cell(config: str, a: float, b: float, g: float, steps: int, root: Path, overrides: list[str],
             settings: ProbeSettings, retrain: bool) -> dict:
    run_dir = root / cell_name(a, b, g)
    cell = {"alpha": a, "beta": b, "gamma": g, "run": str(run_dir)}
    t0 = time.perf_counter()
    if retrain or not has_checkpoint(run_dir, steps):
        if run_dir.exists() and retrain:
            import shutil

            shutil.rmtree(run_dir)
        resume = resume_point(run_dir, steps)
        cfg = load_config(config, [*overrides, f"objective.alpha={a}", f"objective.beta={b}",
                                   f"objective.gamma={g}", f"train.steps={steps}", f"run.dir={run_dir}",
                                   f"train.checkpoint_every={steps}", "train.progress=false",
                                   *([f"run.resume={resume}"] if resume else [])])
        log(f"training {run_dir.name} for {steps} steps" + (" (resuming)" if resume else ""))
        train(cfg)
        cell["train_seconds"] = round(time.perf_counter() - t0, 1)
    else:
        log(f"{run_dir.name}: reusing checkpoint-{steps:06d}")
    t1 = time.perf_counter()
    cfg, objective, step = load_encoder_run(run_dir, str(run_dir / "checkpoints" / f"checkpoint-{steps:06d}"),
                                            settings.device)
    results, _ = run_probes(cfg, objective, settings)
    cell.update(svm_y=results["svm"]["y"]["mean"], svm_y_std=results["svm"]["y"]["std"],
                ndm_y=results["ndm"]["y"], ndm_sigmoid_y=results["ndm"]["sigmoid(y)"],
                mine_y=results["mine"]["y"], step=step, probe_seconds=round(time.perf_counter() - t1, 1))
    return cell


def draw(cells: list[dict], alphas: list[float], betas: list[float], gammas: list[float], out: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(gammas), len(METRICS), squeeze=False,
                             figsize=(3.6 * len(METRICS), 3.0 * len(gammas) + 0.6))
    for r, g in enumerate(gammas):
        for c, (key, label, best) in enumerate(METRICS):
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a dim config (configs/NAME.yaml)")
    p.add_argument("--alpha", type=floats, default=[0.0, 0.5, 1.0])
    p.add_argument("--beta", type=floats, default=[0.0, 0.5, 1.0])
    p.add_argument("--gamma", type=floats, default=None, help="default: the config's gamma")
    p.add_argument("--steps", type=int, default=200, help="training steps per cell")
    p.add_argument("--out", required=True, help="heatmap PNG (numbers go to the same name with .json)")
    p.add_argument("--runs-root", default="runs/ablation", help="cells train into RUNS_ROOT/<cell>")
    p.add_argument("--svm-runs", type=int, default=3)
    p.add_argument("--mine-steps", type=int, default=1000)
    p.add_argument("--ndm-steps", type=int, default=1000)
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--max-test", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="train every cell again")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. model.mi_units=256")
    args = p.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    try:
        base = load_config(args.config, args.overrides)
        if base.objective.name != "dim":
            raise ConfigError(f"--config: the ablation varies DIM's alpha/beta/gamma; {args.config} trains "
                              f"'{base.objective.name}'")
        gammas = args.gamma if args.gamma is not None else [base.objective.gamma]
        settings = ProbeSettings(probes=("svm", "mine", "ndm"), layers=("y",), rep_layer="y",
                                 runs=args.svm_runs, mine_steps=args.mine_steps, ndm_steps=args.ndm_steps,
                                 max_train=args.max_train, max_test=args.max_test, device=args.device)
        cells = []
        for g in gammas:
            for b in args.beta:
                for a in args.alpha:
                    if a == 0 and b == 0:
                        log(f"{cell_name(a, b, g)}: alpha = beta = 0 has no MI term; skipped")
                        cells.append({"alpha": a, "beta": b, "gamma": g, "skipped": "alpha = beta = 0"})
                        continue
                    try:
                        cells.append(run_cell(args.config, a, b, g, args.steps, Path(args.runs_root),
                                              args.overrides, settings, args.retrain))
                    except NonFiniteLoss as err:
                        log(f"{cell_name(a, b, g)}: {err}")
                        cells.append({"alpha": a, "beta": b, "gamma": g, "skipped": f"diverged: {err}"})
                    log(json.dumps(cells[-1]))
    except ConfigError as err:
        return cli_error(err)
    record = {
        "config": args.config, "overrides": args.overrides, "steps": args.steps, "alpha": args.alpha,
        "beta": args.beta, "gamma": gammas, "cells": cells,
        "probes": {"svm_runs": args.svm_runs, "mine_steps": args.mine_steps, "ndm_steps": args.ndm_steps,
                   "max_train": args.max_train, "max_test": args.max_test},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    draw(cells, args.alpha, args.beta, gammas, out,
         f"DIM ablation: {args.config}, {args.steps} steps per cell"
         + (f" ({' '.join(args.overrides)})" if args.overrides else ""))
    print(json.dumps({k: v for k, v in record.items() if k != "cells"} | {"cells": len(cells)}))
    log(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
