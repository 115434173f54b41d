"""IS / FID / KID (and precision/recall) of a trained generator.

    python -m eval.fid_is --run runs/ie_tinyimagenet --inception-weights ~/weights-inception-2015-12-05-6726825d.pth
    python -m eval.fid_is --run runs/ie_digits --num-samples 5000          # digits: the shipped domain extractor

Draws --num-samples images (default 50000) from seeded latents, compares them with
the run's training split (reference statistics cached, see eval.fidelity), prints one
JSON object and appends it to RUN_DIR/metrics.jsonl. A missing weights file fails
before the checkpoint's generator draws a single sample.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from arena.registry import ConfigError, cli_error
from arena.rundir import append_metrics, check_links
from arena.runs import load_run  # a module attribute, so tests can swap it

from .cli_args import count_arg, default_device, device_arg, seed_arg
from .fidelity import check_metrics, describe_features, evaluate_generator, resolve_features

DEFAULT_SAMPLES = 50000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.fid_is", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint directory")
    p.add_argument("--num-samples", type=count_arg(2), default=DEFAULT_SAMPLES,
                   help="samples drawn (at most what this machine's memory holds for their features)")
    p.add_argument("--metrics", default=None, help="comma-separated: fid,isc,kid,prc (default: eval.metrics)")
    p.add_argument("--features", default=None,
                   help="inception | a shipped extractor (e.g. digits-32) | a weights path | auto "
                        "(default: eval.features of the run)")
    p.add_argument("--inception-weights", default=None, help="local copy of torch-fidelity's Inception weights")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="use the EMA generator (--no-ema: the raw G, with its own running BatchNorm statistics)")
    p.add_argument("--ema-bn-batches", type=count_arg(0, 100_000), default=None,
                   help="forward passes that re-estimate the EMA G's BatchNorm statistics before sampling "
                        "(default: the run's objective.ema_bn_batches; 0 = the statistics saved with the EMA copy)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the latents")
    p.add_argument("--batch-size", type=count_arg(1), default=100)
    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("--verbose", action="store_true", help="torch-fidelity's progress output")
    args = p.parse_args(argv)
    try:
        # --metrics "" is a mistake, not a request for the defaults: only a missing flag means eval.metrics
        asked = None if args.metrics is None else check_metrics(
            [m.strip() for m in args.metrics.split(",") if m.strip()], key="--metrics")
        check_links(args.run)  # metrics.jsonl is appended to: never through a link
        cfg, objective, step = load_run(args.run, args.checkpoint, args.device)
        opts = getattr(objective, "opts", None)
        bn_batches = getattr(opts, "ema_bn_batches", 0)
        if args.ema_bn_batches is not None and hasattr(opts, "ema_bn_batches"):
            opts.ema_bn_batches = bn_batches = args.ema_bn_batches
        metrics = asked or check_metrics(cfg.eval.metrics)
        features = args.features or cfg.eval.features
        weights = args.inception_weights or cfg.eval.inception_weights or None
        feats = resolve_features(features, cfg.data, weights)  # fails here, before sampling
        if args.inception_weights and feats["feature_extractor"] != "inception-v3-compat":
            used = Path(feats["feature_extractor_weights_path"]).name
            print(f"[fid_is] --inception-weights is not used: the features are {used} (features "
                  f"'{features}'); add --features inception for Inception's", file=sys.stderr)
        values = evaluate_generator(objective, cfg, num_samples=args.num_samples, metrics=metrics,
                                    features=features, inception_weights=weights, seed=args.seed,
                                    batch_size=args.batch_size, ema=args.ema, verbose=args.verbose,
                                    sample_key="--num-samples")
    except ConfigError as e:
        return cli_error(e)
    record = {
        "step": step,
        **values,
        "num_samples": args.num_samples,
        "features": describe_features(feats),
        "checkpoint": args.checkpoint,
        "seed": args.seed,
        "ema": args.ema,
        "ema_bn_batches": bn_batches if args.ema else None,
    }
    line = json.dumps(record)
    print(line)
    try:  # the values are printed above; an error says why they are not in the run's log
        append_metrics(args.run, record)
    except ConfigError as err:
        return cli_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
