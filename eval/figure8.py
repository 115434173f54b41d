"""The paper's Figure 8 (App. A.2): classification accuracy against the number of negative
samples, for the NCE and JSD DIM losses.

    python -m eval.figure8 --config dim_l_digits --negatives 1,2,4,8,16,32 --out fig8.png
    python -m eval.figure8 --config dim_l_nce_cifar10 --negatives 1,4,16,63 --probe mlp \
        --steps 0 --out fig8_cifar10.png                       (the config's own length)

Each (estimator, negatives, seed) point is --config with objective.estimator,
objective.max_negatives = m (each image's negatives are m other images of the batch, at
every location of their feature map: m * L negative pairs per positive) and run.seed,
trained into RUNS_ROOT/<estimator>_m<m>_s<seed> through eval.experiment (finished runs
are reused, stopped ones resume, a point measured with the same settings is not measured
again). Then the probe (eval.dim_probes: a linear SVM by default, or the MLP) on the
chosen layer. m = batch - 1 is "every other image", the estimators' default. The plot:
one line per estimator, accuracy against m on a log2 axis (the paper's x axis is
log2 of the number of negatives; 0 = one), mean +- std over seeds. Numbers go to OUT.json
and OUT.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from arena import checkpoint as ckpt
from arena.registry import ConfigError

from . import experiment as X
from .cli_args import count_arg
from .dim_probes import LAYERS, ProbeSettings, load_encoder_run, log, run_probes
from .figures import add_common_args, check_objective, line_plot, number_list, point_config, sweep

ESTIMATORS = ("jsd", "nce")


def accuracy(result) -> float:
    """A probe's accuracy: the SVM's {mean, ...} over its runs, or the MLP's number."""
    return float(result["mean"]) if isinstance(result, dict) else float(result)


def point_specs(args) -> list[X.Spec]:
    """One spec per estimator x negatives x seed; --negatives checked against the batch."""
    check_objective(args.config, args.overrides, "dim", "Figure 8")
    specs = []
    for est in args.estimators:
        if est not in ESTIMATORS:
            raise ConfigError(f"--estimators: unknown '{est}'; Figure 8 compares {', '.join(ESTIMATORS)}")
        for m in args.negatives:
            for seed in args.seeds:
                name = f"{est}_m{m}_s{seed}"
                cfg = point_config(args.config, args.overrides, [f"objective.estimator={est}",
                                   f"objective.max_negatives={m}", f"run.seed={seed}"], args.steps,
                                   Path(args.runs_root) / name)
                if not 1 <= m < cfg.train.batch_size:
                    raise ConfigError(f"--negatives: {m} negative images per image needs 1 <= m <= batch - 1 = "
                                      f"{cfg.train.batch_size - 1} (train.batch_size {cfg.train.batch_size})")
                specs.append(X.Spec(name, cfg, {"estimator": est, "negatives": m, "seed": seed},
                                    f"{args.probe}/{args.layer}"))
    return specs


def measure(state, settings: ProbeSettings) -> dict:
    cfg, objective, step = load_encoder_run(state.run_dir, str(ckpt.final_dir(state.run_dir, state.steps)),
                                            settings.device)
    results, _ = run_probes(cfg, objective, settings)
    (probe,), (layer,) = settings.probes, settings.layers
    return {"accuracy": accuracy(results[probe][layer]), "step": step}


def series(records: list[dict]) -> dict[str, list[tuple[float, list[float]]]]:
    """{ESTIMATOR: [(negatives, [accuracy per seed]), ...]} of the measured records."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in records:
        if "accuracy" in r:
            out.setdefault(r["estimator"].upper(), {}).setdefault(r["negatives"], []).append(r["accuracy"])
    return {est: sorted(points.items()) for est, points in out.items()}


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
    p.add_argument("--negatives", type=number_list(int), default=[1, 2, 4, 8, 16, 32],
                   help="negative images per image, each 1..batch-1")
    p.add_argument("--estimators", type=number_list(str), default=list(ESTIMATORS))
    p.add_argument("--seeds", type=number_list(int), default=[0], help="training seeds per point")
    p.add_argument("--steps", type=count_arg(0), default=0, help="training steps per point (0: the config's)")
    p.add_argument("--probe", choices=("svm", "mlp"), default="svm")
    p.add_argument("--layer", choices=LAYERS, default="y")
    p.add_argument("--svm-runs", type=count_arg(1), default=3)
    p.add_argument("--mlp-epochs", type=count_arg(1), default=100)
    add_common_args(p, "figure8")
    return p


def _run(args) -> int:
    out = X.output_file(args.out, "--out")
    t0 = time.perf_counter()
    settings = ProbeSettings(probes=(args.probe,), layers=(args.layer,), runs=args.svm_runs,
                             mlp_epochs=args.mlp_epochs, max_train=args.max_train, max_test=args.max_test,
                             device=args.device)
    settings.check(flags={"runs": "--svm-runs"})
    specs = point_specs(args)
    probe = {"probe": args.probe, "layer": args.layer, "svm_runs": args.svm_runs, "mlp_epochs": args.mlp_epochs,
             "max_train": args.max_train, "max_test": args.max_test}
    head = {"config": args.config, "overrides": args.overrides, "steps": args.steps, **probe}
    records = sweep("figure8", specs, lambda state: measure(state, settings), head, out, to_markdown)
    line_plot(series(records), out, xlabel="negative images per image (log2 axis)",
              ylabel=f"{args.probe.upper()} accuracy on {args.layer} (%)", log2_x=True,
              title=f"Figure 8: {args.config}" + (f", {args.steps} steps" if args.steps else "")
              + f"\n{len(args.seeds)} seed(s), mean +- std")
    log(f"wrote {out}, {out.with_suffix('.json')} and {out.with_suffix('.md')} ({time.perf_counter() - t0:.0f}s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    return X.run_cli("figure8", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
