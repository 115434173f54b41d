"""The one training entry point.

    accelerate launch train.py --config ie_lsun.yaml [key.sub=value ...]
    python train.py --config prior_match_digits train.steps=200
    python train.py --config ie_digits --print-config
"""
from __future__ import annotations

import argparse
import sys

import dim  # noqa: F401  importing the method packages registers their objectives
import implicit_gen  # noqa: F401
from arena.cli import ENDINGS, exit_status
from arena.config import annotated_yaml, load_config
from arena.distributed import shutdown
from arena.trainer import train


def hooks_for(cfg):
    """Metric hooks from eval/ (the only place the trainer's caller reaches into eval):
    the encoder monitor (train.monitor) and the generator metrics (eval.every)."""
    if cfg.eval.every <= 0 and not cfg.train.monitor.enabled:
        return []
    from eval.hooks import training_hooks

    return training_hooks(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="configs/NAME.yaml by name, or a path to a YAML file")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config (each value with the file that set it) and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200 data.root=/data "
                                                     "(before or after the options)")
    args = parser.parse_intermixed_args(argv)  # overrides on either side of --config
    try:
        if args.print_config:
            print(annotated_yaml(args.config, args.overrides), end="")
            return 0
        cfg = load_config(args.config, args.overrides)
        train(cfg, hooks_for(cfg))
        shutdown()
    except ENDINGS as err:  # bad input 2, diverged 3, stopped 128 + signal, interrupted 130
        return exit_status(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
