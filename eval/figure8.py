r"""The paper's Figure 8 (App. A.2): classification accuracy against the number of negative
samples, for the NCE and JSD DIM losses.

    python -m eval.figure8 --config dim_l_digits --negatives 1,2,4,8,16,32 --out fig8.png
    python -m eval.figure8 --config dim_l_nce_cifar10 --negatives 1,4,16,63 --probe mlp \
        --steps 0 --out fig8_cifar10.png                       (the config's own length)

Each (estimator, negatives, seed) point is --config with objective.estimator,
objective.max_negatives = m (each image's negatives are m other images of the batch, at
every location of their feature map: m * L negative pairs per positive) and run.seed,
trained into RUNS_ROOT/<estimator>_m<m>_s<seed>. Then the probe (eval.dim_probes: a
linear SVM by default, or the MLP) on the chosen layer. m = batch - 1 is "every other
image", the estimators' default. The plot: one line per estimator, accuracy against m on
a log2 axis (the paper's x axis is log2 of the number of negatives; 0 = one), mean +- std
over seeds. Numbers go to OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import sys
from itertools import product

from arena.registry import ConfigError

from . import figures as F
from .cli_args import count_arg
from .dim_probes import LAYERS

ESTIMATORS = ("jsd", "nce")


def point_specs(args) -> list:
    """One spec per estimator x negatives x seed; --negatives checked against the batch."""
    F.check_objective(args, "dim", "Figure 8")
    unknown = [est for est in args.estimators if est not in ESTIMATORS]
    if unknown:
        raise ConfigError(f"--estimators: unknown '{unknown[0]}'; Figure 8 compares {', '.join(ESTIMATORS)}")
    specs = []
    for est, m, seed in product(args.estimators, args.negatives, args.seeds):
        options = [f"objective.estimator={est}", f"objective.max_negatives={m}", f"run.seed={seed}"]
        spec = F.point(args, f"{est}_m{m}_s{seed}", options, {"estimator": est, "negatives": m, "seed": seed},
                       f"{args.probe}/{args.layer}")
        batch = spec.cfg.train.batch_size
        if not 1 <= m < batch:
            raise ConfigError(f"--negatives: {m} negative images per image needs 1 <= m <= batch - 1 = {batch - 1} "
                              f"(train.batch_size {batch})")
        specs.append(spec)
    return specs


def measure(state, settings) -> dict:
    results, step = F.probe_point(state, settings)
    (probe,), (layer,) = settings.probes, settings.layers
    result = results[probe][layer]  # the SVM's {mean, ...} over its runs, or the MLP's number
    return {"accuracy": float(result["mean"] if isinstance(result, dict) else result), "step": step}


def series(records: list[dict]) -> dict[str, list[tuple[float, list[float]]]]:
    """{ESTIMATOR: [(negatives, [accuracy per seed]), ...]} of the measured records."""
    return F.group(records, lambda r: r["estimator"].upper(), "negatives",
                   lambda r: [r["accuracy"]] if "accuracy" in r else [])


def to_markdown(data: dict) -> str:
    lines = [f"# Figure 8: {data['config']}, {data['probe']} on {data['layer']} (% test accuracy)", "",
             "| estimator | negatives | seed | accuracy |", "|---|---|---|---|"]
    for r in data["points"]:
        acc = f"{r['accuracy']:.2f}" if "accuracy" in r else r.get("skipped", "")
        lines.append(f"| {r['estimator']} | {r['negatives']} | {r['seed']} | {acc} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.figure8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="dim_l_digits", help="a dim config (configs/NAME.yaml)")
    p.add_argument("--negatives", type=F.number_list(int), default=[1, 2, 4, 8, 16, 32],
                   help="negative images per image, each 1..batch-1")
    p.add_argument("--estimators", type=F.number_list(str), default=list(ESTIMATORS))
    p.add_argument("--seeds", type=F.number_list(int), default=[0], help="training seeds per point")
    p.add_argument("--steps", type=count_arg(0), default=0, help="training steps per point (0: the config's)")
    p.add_argument("--probe", choices=("svm", "mlp"), default="svm")
    p.add_argument("--layer", choices=LAYERS, default="y")
    p.add_argument("--svm-runs", type=count_arg(1), default=3)
    p.add_argument("--mlp-epochs", type=count_arg(1), default=100)
    return F.add_common_args(p, "figure8")


def plot(records: list[dict], args, out) -> None:
    F.line_plot(series(records), out, xlabel="negative images per image (log2 axis)", log2_x=True,
                ylabel=f"{args.probe.upper()} accuracy on {args.layer} (%)",
                title=f"Figure 8: {args.config}" + (f", {args.steps} steps" if args.steps else "")
                + f"\n{len(args.seeds)} seed(s), mean +- std")


def _run(args, out) -> None:
    settings = F.probe_settings(args, probes=(args.probe,), layers=(args.layer,), mlp_epochs=args.mlp_epochs)
    head = F.flags(args, "config", "overrides", "steps", "probe", "layer", "svm_runs", "mlp_epochs", "max_train",
                   "max_test")
    F.sweep("figure8", point_specs(args), lambda state: measure(state, settings), head, out,
            lambda records: plot(records, args, out), render=to_markdown)


def main(argv: list[str] | None = None) -> int:
    return F.main("figure8", build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
