"""Loading a trained run for evaluation: config, objective, weights (and EMA) from a checkpoint."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from . import checkpoint as ckpt
from .config import config_from_dict
from .objective import DataInfo, Objective, build_objective
from .registry import ConfigError


def load_run(run_dir: str | Path, checkpoint: str = "latest", device: str | torch.device = "cpu"):
    """-> (cfg, objective, step): the objective's nets and EMA copies hold the saved
    weights and are in eval mode. `checkpoint` is 'latest' (the newest checkpoint that
    can be read; unreadable newer ones are named on stderr) or a checkpoint directory.
    Weights holding nan or inf are refused: nothing evaluated from them would mean anything."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--run: {run_dir} is not a directory")
    loaded = ckpt.load_checkpoint(run_dir, checkpoint, key="--checkpoint",
                                  warn=lambda msg: print(f"warning: {msg}", file=sys.stderr))
    where, saved = loaded.where, loaded.state
    if loaded.skipped:
        print(f"warning: using {where} (step {saved['step']}) instead", file=sys.stderr)
    bad = ckpt.nonfinite_tensors(ckpt.weight_groups(saved))
    if bad:
        raise ConfigError(f"--checkpoint: {where} holds non-finite weights (nan or inf) in "
                          f"{ckpt.describe_nonfinite(bad)}; evaluate an earlier checkpoint (--checkpoint DIR)")
    cfg = config_from_dict(yaml.safe_load(saved["config"]), name=run_dir.name)
    cfg.run.dir = str(run_dir)
    objective: Objective = build_objective(cfg, DataInfo(**saved["data_info"]))
    ckpt.restore(objective, saved, where)
    # on a GPU in the layout the trainer uses there (tensor-core convolutions read NHWC)
    layout = torch.channels_last if torch.device(device).type == "cuda" else torch.preserve_format
    objective.nets.to(device, memory_format=layout).eval()
    for ema in objective.ema.values():
        ema.to(device, memory_format=layout).eval()
    return cfg, objective, int(saved["step"])
