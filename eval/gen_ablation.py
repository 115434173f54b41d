"""A grid of generator runs, each scored by FID and by how well its discriminator
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

Each cell trains into RUNS_ROOT/<cell> with arena.trainer.train (skipped when a
checkpoint of that many steps is there, as in eval.ablation), then is measured:

- FID (and KID) of --num-samples samples in the data's domain features (digits: the
  shipped digits-32 extractor) for three generators: the EMA G with BatchNorm
  statistics re-estimated for its weights (`fid`), the EMA G with the statistics the
  trainer copied from the live G (`fid_ema_copied_bn`) and the live G (`fid_raw`);
- the separability of the image net's output (D, or the IE's E) on the test split
  against as many samples of the live G (the one it was trained against): ROC AUC of
  the output as a real/fake score and histogram overlap (eval.figure14);
- the data batches the cell drew (steps x batches per step).

Prints one JSON line per cell and a Markdown table at the end. --out is rewritten after
each cell; when it already holds results of the same grid settings (steps, budget,
common overrides, sample count), the cells not measured in this call are kept, so a
grid can be filled a few cells at a time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

from arena.config import load_config
from arena.objective import DataInfo
from arena.registry import ConfigError
from arena.trainer import NonFiniteLoss, train

from .ablation import has_checkpoint
from .fid_is import load_run
from .fidelity import evaluate_generator


def read_grid(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--grid: {p} is not a file")
    grid = yaml.safe_load(p.read_text()) or {}
    unknown = set(grid) - {"steps", "budget", "common", "cells"}
    if unknown:
        raise ConfigError(f"--grid {p}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"valid: steps, budget, common, cells")
    if grid.setdefault("budget", "steps") not in ("steps", "data"):
        raise ConfigError(f"--grid {p}: budget '{grid['budget']}' is not one of steps, data")
    if not isinstance(grid.get("steps"), int) or grid["steps"] < 1:
        raise ConfigError(f"--grid {p}: 'steps' must be an integer >= 1")
    if not isinstance(grid.get("cells"), dict) or not grid["cells"]:
        raise ConfigError(f"--grid {p}: 'cells' must map cell names to {{config, overrides}}")
    for name, cell in grid["cells"].items():
        if not isinstance(cell, dict) or "config" not in cell or set(cell) - {"config", "overrides"}:
            raise ConfigError(f"--grid {p}: cell '{name}' needs 'config' (and optionally 'overrides') only")
    grid.setdefault("common", [])
    return grid


def separability_at(objective, cfg, n: int) -> dict:
    """The image net's output on n test images vs n samples of the live G."""
    from .figure14 import outputs, separability

    r, f = outputs(objective, objective.image_net, cfg, n)
    return {**separability(r, f), "out_real": r.mean().item(), "out_fake": f.mean().item()}


def measure(run_dir: Path, steps: int, num_samples: int, device: str) -> dict:
    cfg, objective, step = load_run(str(run_dir), str(run_dir / "checkpoints" / f"checkpoint-{steps:06d}"), device)
    metrics = ["fid", "kid"]

    def fid(ema: bool) -> dict:
        v = evaluate_generator(objective, cfg, num_samples=num_samples, metrics=metrics, ema=ema)
        return {"fid": v["fid"], "kid": v["kid_mean"]}

    out = {"step": step, "data_batches": step * objective.data_batches_per_step()}
    bn_batches = objective.opts.ema_bn_batches
    # First the EMA G with the live G's statistics, as the trainer copies them (the
    # checkpoint's EMA copy may hold re-estimated ones: a sample grid at the last step).
    with torch.no_grad():
        for e, b in zip(objective.ema["G"].buffers(), objective.nets["G"].buffers()):
            e.copy_(b)
    objective.opts.ema_bn_batches = 0
    copied = fid(True)
    objective.opts.ema_bn_batches = bn_batches or 200
    out.update(fid(True))
    out.update(fid_ema_copied_bn=copied["fid"], kid_ema_copied_bn=copied["kid"])
    raw = fid(False)
    out.update(fid_raw=raw["fid"], kid_raw=raw["kid"])
    out.update(separability_at(objective, cfg, 360))
    return out


def log(msg: str) -> None:
    print(f"[gen_ablation] {msg}", file=sys.stderr, flush=True)


def cell_steps(cell: dict, grid: dict) -> int:
    """budget: steps -> every cell trains `steps` steps; budget: data -> every cell reads
    `steps` data batches, i.e. steps // (its batches per step) steps."""
    if grid["budget"] == "steps":
        return grid["steps"]
    from arena.trainer import build_objective

    cfg = load_config(cell["config"], [*grid["common"], *cell.get("overrides", [])])
    per_step = build_objective(cfg, DataInfo(1, cfg.data.resolution)).data_batches_per_step()
    return max(1, grid["steps"] // per_step)


def run_cell(name: str, cell: dict, grid: dict, root: Path, num_samples: int, device: str, do_train: bool) -> dict:
    steps, run_dir = cell_steps(cell, grid), root / name
    record = {"cell": name, "config": cell["config"], "overrides": cell.get("overrides", [])}
    if not has_checkpoint(run_dir, steps):
        if not do_train:
            return {**record, "skipped": f"no checkpoint-{steps:06d} under {run_dir} (--no-train)"}
        cfg = load_config(cell["config"], [*grid["common"], *cell.get("overrides", []), f"train.steps={steps}",
                                           f"run.dir={run_dir}", f"train.checkpoint_every={steps}",
                                           "train.progress=false"])
        log(f"training {name} for {steps} steps")
        t0 = time.perf_counter()
        try:
            train(cfg)
        except NonFiniteLoss as err:
            return {**record, "skipped": f"diverged: {err}"}
        record["train_seconds"] = round(time.perf_counter() - t0, 1)
    return {**record, **measure(run_dir, steps, num_samples, device)}


def table(cells: list[dict]) -> str:
    rows = ["| cell | overrides | data batches | FID (EMA, BN re-estimated) | FID (EMA, copied BN) | FID (raw G) "
            "| KID | AUC (1:1, end) | overlap |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        over = " ".join(c["overrides"]) or "-"
        if "skipped" in c:
            rows.append(f"| {c['cell']} | {over} | {c['skipped']} |||||||")
            continue
        rows.append(f"| {c['cell']} | {over} | {c['data_batches']} | {c['fid']:.2f} | {c['fid_ema_copied_bn']:.2f} "
                    f"| {c['fid_raw']:.2f} | {c['kid']:.3f} | {c['auc']:.3f} | {c['overlap']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True, help="YAML grid (see above)")
    p.add_argument("--runs-root", default="runs/gen_ablation")
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--cells", default="", help="comma-separated subset of the grid's cells")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--no-train", dest="train", action="store_false", help="measure existing runs only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        grid = read_grid(args.grid)
        names = [c for c in args.cells.split(",") if c] or list(grid["cells"])
        missing = [c for c in names if c not in grid["cells"]]
        if missing:
            raise ConfigError(f"--cells: {', '.join(missing)} not in {args.grid} ({', '.join(grid['cells'])})")
        head = {"grid": args.grid, "steps": grid["steps"], "budget": grid["budget"], "common": grid["common"],
                "num_samples": args.num_samples}
        out = Path(args.out)
        kept = earlier_cells(out, head, grid)
        order = list(grid["cells"]) + [c for c in kept if c not in grid["cells"]]
        for name in names:
            record = run_cell(name, grid["cells"][name], grid, Path(args.runs_root), args.num_samples,
                              args.device, args.train)
            print(json.dumps(record), flush=True)
            if "skipped" in record and "skipped" not in kept.get(name, {"skipped": ""}):
                log(f"{name}: {record['skipped']}; keeping its earlier result in {out}")
                continue  # a measured result is never replaced by a skipped one
            kept[name] = record
            cells = [kept[c] for c in order if c in kept]
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps({**head, "cells": cells}, indent=1) + "\n")
            tmp.replace(out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table([kept[c] for c in order if c in kept]))
    return 0


def earlier_cells(out: Path, head: dict, grid: dict) -> dict[str, dict]:
    """The cells an earlier call wrote to `out` with the same settings; none otherwise
    (a file of other settings is replaced, and the log says so). A cell whose config or
    overrides differ from the grid's now is dropped: its result measured something else."""
    if not out.exists():
        return {}
    try:
        earlier = json.loads(out.read_text())
        same = all(earlier.get(k) == v for k, v in head.items() if k != "grid")
        cells = {c["cell"]: c for c in earlier["cells"]} if same else {}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"--out {out}: not a results file of eval.gen_ablation; name another file") from None
    if not same:
        log(f"{out} holds results of other settings (steps, budget, common, --num-samples): replacing them")
    for name, c in list(cells.items()):
        now = grid["cells"].get(name)
        if now is not None and (c.get("config"), c.get("overrides")) != (now["config"], now.get("overrides", [])):
            log(f"{out}: dropping {name}'s earlier result: the grid now gives it other options")
            del cells[name]
    return cells


if __name__ == "__main__":
    sys.exit(main())
