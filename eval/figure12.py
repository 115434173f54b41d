"""The paper's Figure 12 (App. A.5): the neural dependency measure (NDM) of beta-VAE codes
against beta.

    python -m eval.figure12 --config vae_digits --betas 0.1,0.5,1,1.5,2,4 --seeds 0,1,2 --out fig12.png
    python -m eval.figure12 --config vae_cifar10 --seeds 0,1,2,3,4 --ndm-nets 10 --steps 0 --out fig12.png

Each (beta, seed) point is --config with objective.beta and run.seed, trained into
RUNS_ROOT/b<beta>_s<seed>. NDM (eval.probes.ndm: a DV discriminator between the codes
and their dimension-wise shuffled copy, trained on the TRAIN codes and read on the TEST
codes) is measured --ndm-nets times per run with differently seeded discriminators, as
the paper's "five runs of each VAE and estimating NDM with 10 different networks". The
code is the one the objective names in `ndm_layer` (the VAE's objective.ndm_code: a
posterior sample z by default, or mu = Y); the plot says which. The plot: mean +- std
over every run and network per beta, each measurement a faint dot. Numbers go to
OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import sys
from itertools import product

from arena.registry import ConfigError

from . import figures as F
from . import probes as P
from .cli_args import count_arg
from .dim_probes import extract, image_batches, labeled_indices, probe_datasets, subset

PAPER_BETAS = [0.1, 0.5, 1.0, 1.5, 2.0, 4.0]
CODE_NAMES = {"y": "mu (Y)", "z": "a posterior sample z"}


def point_specs(args) -> list:
    F.check_objective(args, "vae", "Figure 12")
    negative = [beta for beta in args.betas if beta < 0]
    if negative:
        raise ConfigError(f"--betas: beta must be >= 0, got {negative[0]:g}")
    return [F.point(args, f"b{beta:g}_s{seed}", [f"objective.beta={beta}", f"run.seed={seed}"],
                    {"beta": beta, "seed": seed}, f"ndm x {args.ndm_nets}")
            for beta, seed in product(args.betas, args.seeds)]


def measure(state, args) -> dict:
    """NDM of the run's ndm_layer code, once per discriminator seed 0..ndm_nets-1."""
    cfg, objective, step = F.final_encoder(state, args.device)
    layer = getattr(objective, "ndm_layer", "y")
    codes = []
    for ds, limit, seed in zip(probe_datasets(cfg), (args.max_train, args.max_test), (0, 1)):
        idx = subset(labeled_indices(ds), limit, seed)
        feats, _, _ = extract(objective, image_batches(ds, idx, 256, data_cfg=cfg.data), (layer,))
        codes.append(feats[layer])
    values = [P.ndm(codes[0], codes[1], sigmoid=args.sigmoid, steps=args.ndm_steps, seed=k, device=args.device)
              for k in range(args.ndm_nets)]
    return {"layer": layer, "ndm": values, **{k: v for k, v in F.spread(values).items() if k != "n"}, "step": step}


def series(records: list[dict]) -> dict[str, list[tuple[float, list[float]]]]:
    """{code: [(beta, [every NDM of every seed]), ...]}."""
    return F.group(records, lambda r: CODE_NAMES.get(r["layer"], r["layer"]), "beta", lambda r: r.get("ndm"))


def to_markdown(data: dict) -> str:
    lines = [f"# Figure 12: {data['config']}, NDM (nats) per beta", "",
             "| beta | seed | code | NDM mean | NDM std | nets |", "|---|---|---|---|---|---|"]
    for r in data["points"]:
        if "ndm" in r:
            lines.append(f"| {r['beta']:g} | {r['seed']} | {r['layer']} | {r['mean']:.3f} | {r['std']:.3f} "
                         f"| {len(r['ndm'])} |")
        else:
            lines.append(f"| {r['beta']:g} | {r['seed']} | | {r.get('skipped', '')} | | |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.figure12", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="vae_digits", help="a vae config (configs/NAME.yaml)")
    p.add_argument("--betas", type=F.number_list(float), default=PAPER_BETAS)
    p.add_argument("--seeds", type=F.number_list(int), default=[0, 1, 2], help="training seeds per beta")
    p.add_argument("--steps", type=count_arg(0), default=0, help="training steps per run (0: the config's)")
    p.add_argument("--ndm-nets", type=count_arg(1), default=3, help="NDM discriminators per run")
    p.add_argument("--ndm-steps", type=count_arg(1), default=1000)
    p.add_argument("--sigmoid", action="store_true", help="NDM on sigmoid(code) (Table 3's DIM column)")
    return F.add_common_args(p, "figure12")


def plot(records: list[dict], args, out) -> None:
    codes = sorted({CODE_NAMES.get(r["layer"], r["layer"]) for r in records if "layer" in r})
    F.line_plot(series(records), out, xlabel="beta", symlog_y=True,
                ylabel="NDM (nats, symlog axis)" + (", sigmoid" if args.sigmoid else ""),
                title=f"Figure 12: {args.config}, NDM on {' / '.join(codes) or '?'}\n"
                      f"{len(args.seeds)} run(s) x {args.ndm_nets} NDM net(s) per beta, mean +- std")


def _run(args, out) -> None:
    head = F.flags(args, "config", "overrides", "steps", "ndm_nets", "ndm_steps", "sigmoid", "max_train", "max_test")
    F.sweep("figure12", point_specs(args), lambda state: measure(state, args), head, out,
            lambda records: plot(records, args, out), render=to_markdown)


def main(argv: list[str] | None = None) -> int:
    return F.main("figure12", build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
