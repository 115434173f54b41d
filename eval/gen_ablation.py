r"""A grid of generator runs, each scored by FID and by how well its discriminator
(the IE: its encoder) tells real from generated data.

    python -m eval.gen_ablation --grid eval/grids/ie_digits.yaml --runs-root runs/ie_ablation \
        --out docs/img/ie_ablation_digits.json [--cells ie_base,nsgan_cp] [--no-train]

The grid file names a step budget, overrides shared by every cell and, per cell, a
config and its overrides:

    steps: 600
    budget: steps            # or data: `steps` data batches per cell (IE 2 a step, WGAN-GP 5, ...)
    common: [model.width=16]
    cells:
      ie_base: {config: ie_digits}
      ie_real_mean: {config: ie_digits, overrides: [objective.g_target=real_mean]}

Each cell trains into RUNS_ROOT/<cell> through arena.runs.ensure_trained (a finished
run is reused, a stopped one resumed, a cell whose options changed trains beside the
old run), then is measured (eval.experiment drives it):

- FID (and KID) of --num-samples samples in the data's domain features (digits: the
  shipped digits-32 extractor) for three generators: the EMA G with BatchNorm
  statistics re-estimated for its weights (`fid`), the EMA G with the statistics the
  trainer copied from the live G (`fid_ema_copied_bn`) and the live G (`fid_raw`);
- the separability of the image net's output (D, or the IE's E) on the test split
  against as many samples of the live G (the one it was trained against): ROC AUC of
  the output as a real/fake score and histogram overlap (eval.figure14);
- the data batches the cell drew (steps x batches per step).

Prints one JSON line per cell and a Markdown table at the end. --out (and the .md beside
it) is rewritten after each cell; when it already holds results of the same grid
settings (steps, budget, common overrides, sample count), the cells not measured in this
call are kept, so a grid can be filled a few cells at a time. Cell names become
directory names: letters, digits and _ . + = - only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from arena.config import load_config
from arena.distributed import processes
from arena.objective import DataInfo, build_objective
from arena.registry import ConfigError
from implicit_gen.base import GeneratorOptions

from . import experiment as X
from .cli_args import default_device, device_arg
from .fidelity import evaluate_generator
from .figure14 import outputs, separability

GRID_KEYS = ("steps", "budget", "common", "cells")


def read_grid(path: str) -> dict:
    grid = X.read_yaml_mapping(path, "--grid")
    where = f"--grid {path}"
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; valid: {', '.join(GRID_KEYS)}")
    if grid.setdefault("budget", "steps") not in ("steps", "data"):
        raise ConfigError(f"{where}: budget '{grid['budget']}' is not one of steps, data")
    steps = grid.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 10**9:
        raise ConfigError(f"{where}: 'steps' must be an integer from 1 to 10^9")
    if not isinstance(grid.get("cells"), dict) or not grid["cells"]:
        raise ConfigError(f"{where}: 'cells' must map cell names to {{config, overrides}}")
    grid["common"] = X.string_list(grid.get("common") or [], f"{where}: common")
    for name, cell in grid["cells"].items():
        X.safe_name(name, f"{where}: cell")
        if not isinstance(cell, dict) or "config" not in cell or set(cell) - {"config", "overrides"}:
            raise ConfigError(f"{where}: cell '{name}' needs 'config' (and optionally 'overrides') only")
        if not isinstance(cell["config"], str):
            raise ConfigError(f"{where}: cell '{name}': config must be a config name, got {X.short(cell['config'])}")
        cell["overrides"] = X.string_list(cell.get("overrides") or [], f"{where}: cell '{name}' overrides")
    return grid


def measure(state, num_samples: int, device: str) -> dict:
    """FID / KID of three generators, and separability of the image net's output, at the run's last step."""
    cfg, objective, step = X.load_final(state, device)

    def fid(ema: bool, name: str = "") -> dict:
        v = evaluate_generator(objective, cfg, num_samples=num_samples, metrics=["fid", "kid"], ema=ema)
        return {f"fid{name}": v["fid"], f"kid{name}": v["kid_mean"]}

    bn_batches = objective.opts.ema_bn_batches
    # First the EMA G with the live G's statistics, as the trainer copies them (the
    # checkpoint's EMA copy may hold re-estimated ones: a sample grid at the last step).
    with torch.no_grad():
        for e, b in zip(objective.ema["G"].buffers(), objective.nets["G"].buffers()):
            e.copy_(b)
    objective.opts.ema_bn_batches = 0
    copied = fid(True, "_ema_copied_bn")
    # then re-estimated for the EMA weights, even if the cell turned that off
    objective.opts.ema_bn_batches = bn_batches or GeneratorOptions.ema_bn_batches
    # the image net (D, or the IE's E) on 360 test images against as many samples of the live G
    r, f = outputs(objective, objective.image_net, cfg, 360)
    return {"step": step, "data_batches": step * objective.data_batches_per_step(), **fid(True), **copied,
            **fid(False, "_raw"), **separability(r, f), "out_real": r.mean().item(), "out_fake": f.mean().item()}


def log(msg: str) -> None:
    print(f"[gen_ablation] {msg}", file=sys.stderr, flush=True)


def cell_config(name: str, grid: dict, root: Path):
    """The resolved config of one cell: the grid's common overrides, the cell's, its budget."""
    cell = grid["cells"][name]
    overrides = [*grid["common"], *cell["overrides"]]
    steps = grid["steps"]
    if grid["budget"] == "data":  # every cell reads `steps` data batches
        cfg = load_config(cell["config"], overrides)
        steps = max(1, steps // build_objective(cfg, DataInfo(1, cfg.data.resolution)).data_batches_per_step())
    return load_config(cell["config"], [*overrides, f"train.steps={steps}", f"run.dir={root / name}",
                                        f"train.checkpoint_every={steps}", "train.progress=false"])


def table(data: dict) -> str:
    rows = []
    for c in data["cells"]:
        over = " ".join(c["overrides"]) or "-"
        if "skipped" in c:
            rows.append([c["cell"], over, c["skipped"]])
            continue
        rows.append([c["cell"], over, c["data_batches"], f"{c['fid']:.2f}", f"{c['fid_ema_copied_bn']:.2f}",
                     f"{c['fid_raw']:.2f}", f"{c['kid']:.3f}", f"{c['auc']:.3f}", f"{c['overlap']:.2f}"])
    return X.markdown_table(["cell", "overrides", "data batches", "FID (EMA, BN re-estimated)", "FID (EMA, copied BN)",
                             "FID (raw G)", "KID", "AUC (1:1, end)", "overlap"], rows)


def drop_changed(results: X.Results, grid: dict) -> None:
    """An earlier cell whose config or overrides differ from the grid's now measured something else."""
    for name, c in list(results.records.items()):
        now = grid["cells"].get(name)
        if now is not None and (c.get("config"), c.get("overrides")) != (now["config"], now["overrides"]):
            log(f"{results.path}: dropping {name}'s earlier result: the grid now gives it other options")
            del results.records[name]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.gen_ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True, help="YAML grid (see above)")
    p.add_argument("--runs-root", default="runs/gen_ablation")
    p.add_argument("--out", required=True, help="JSON file for the results (a Markdown table goes beside it)")
    p.add_argument("--cells", default="", help="comma-separated subset of the grid's cells")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--no-train", dest="train", action="store_false", help="measure existing runs only")
    p.add_argument("--device", type=device_arg, default=default_device())
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return X.run_cli("gen_ablation", lambda: _run(args))


def _run(args) -> int:
    grid = read_grid(args.grid)
    X.in_range("--num-samples", args.num_samples, 10**7)
    names = X.choose(args.cells, grid["cells"], "--cells", f" in {args.grid}")
    head = {"grid": args.grid, "steps": grid["steps"], "budget": grid["budget"], "common": grid["common"],
            "num_samples": args.num_samples}
    results = X.Results(X.output_file(args.out, "--out"), head, field="cells", key="cell",
                        render=table, compare=["steps", "budget", "common", "num_samples"],
                        say=log, command="eval.gen_ablation")
    drop_changed(results, grid)
    specs = [X.Spec(n, cell_config(n, grid, Path(args.runs_root)), dict(grid["cells"][n])) for n in names]

    def measure_cell(spec, state) -> dict:
        out = measure(state, args.num_samples, args.device)
        print(json.dumps({"cell": spec.key, **spec.record, **out}), flush=True)
        return out

    results.order = list(grid["cells"])
    X.run_specs(specs, X.on_main(measure_cell), results, train=args.train, say=log)
    if processes().main:
        print(table(results.data()), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
