"""Runs as experiments see them: the one rule that trains, resumes or reuses a run
(`ensure_trained`, `plan_run`), and loading a trained run for evaluation (`load_run`)."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import Config, config_from_dict, config_from_text, read_config_text
from .objective import DataInfo, Objective, build_objective
from .registry import ConfigError
from .schema import read_yaml_text
from .updates import use_gpu_paths


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
    cfg = config_from_text(saved["config"], f"{where}: the saved config", run_dir.name)
    cfg.run.dir = str(run_dir)
    objective: Objective = build_objective(cfg, DataInfo(**saved["data_info"]))
    ckpt.restore(objective, saved, where)
    # in the layout the trainer uses on that device (tensor-core convolutions read NHWC)
    layout = torch.channels_last if use_gpu_paths(cfg.train.gpu_paths, device) else torch.preserve_format
    objective.nets.to(device, memory_format=layout).eval()
    for ema in objective.ema.values():
        ema.to(device, memory_format=layout).eval()
    return cfg, objective, int(saved["step"])


# ---------------------------------------------------------------------------- the run rule
#
# Every command that trains runs (train.py aside, which does what its config says) asks
# `ensure_trained` whether a run is trained from scratch, resumed or reused. A run is
# identified by its resolved config minus the keys below, which change how a run is
# driven or where its inputs are found but never the weights it ends with.
NOT_IDENTITY = (
    "run.dir",  # where the run lives, not what it is
    "run.resume",  # how this call starts it
    "train.progress",  # a progress bar
    "train.log_every",  # how often the device counters are read and written to metrics.jsonl
    "train.checkpoint_every",  # a save reads the state, it never changes it
    "train.keep_checkpoints",  # how many old saves rotation keeps
    "data.root",  # the same dataset may sit in another folder
    "data.download",  # fetching it first or not
    "data.num_workers",  # loader processes: every item is seeded by its position, not its worker
    "eval.inception_weights",  # a local copy of the same weights
    "train.gpu_paths",  # fused updates and memory layout: the same math, to float rounding
    "train.monitor",  # the kNN monitor reads features between steps; it changes no weight (tested)
    "train.log_with",  # where the logged values also go
)


@dataclass
class RunState:
    """What `plan_run` found for a config and what `ensure_trained` then did.

    how: 'fresh' (no checkpoint: trained from step 0), 'resume' (an earlier checkpoint of
    this config: continued from `done`) or 'reuse' (finished at train.steps: not trained).
    cfg.run.dir is the directory the run lives in (see `plan_run` for when it is not the
    one asked for) and cfg.run.resume is set as training it needs."""

    cfg: Config
    how: str
    done: int  # the step of the newest checkpoint found before training
    note: str = ""  # why the run is not in the directory asked for ('' when it is)
    objective: Objective | None = None  # the trained objective when this call trained it
    seconds: float = 0.0  # time spent training in this call

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)

    @property
    def steps(self) -> int:
        return self.cfg.train.steps


def identity(cfg_dict: dict) -> dict:
    """The flattened config ({'train.steps': 500, ...}) minus NOT_IDENTITY (a key, or a
    whole section such as train.monitor)."""
    flat: dict = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(cfg_dict, "")
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_IDENTITY)}


def identity_hash(cfg: Config) -> str:
    """8 hex digits of the sha256 of the config's identity: names a run trained beside another."""
    text = json.dumps(identity(cfg.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def read_config_file(path: Path) -> dict:
    """A run's config.yaml as a mapping, or a ConfigError naming the file (never a traceback:
    damaged YAML, another encoding, a list at the top level)."""
    try:  # the config reader's bounds hold here too: size, nesting, aliases
        raw = read_yaml_text(read_config_text(path), str(path))
    except ConfigError as err:
        raise ConfigError(f"{path} is not a readable config ({str(err).removeprefix(f'{path}: ')}); it may belong "
                          f"to a run worth keeping: repair or remove it, or choose another run directory") from None
    if not isinstance(raw, dict):
        kind = "str" if isinstance(raw, str) else type(raw).__name__
        raise ConfigError(f"{path} holds a {kind}, not a config mapping; repair or remove it, "
                          f"or choose another run directory")
    return raw


def read_run_config(run_dir: str | Path) -> Config:
    """The config a run directory was trained with (its config.yaml), run.dir set to it."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--run: {path} not found (the trainer writes it when a run starts)")
    try:
        cfg = config_from_dict(read_config_file(path), name=run_dir.name)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    cfg.run.dir = str(run_dir)
    return cfg


def saved_identity(run_dir: Path) -> dict | None:
    """The identity of the config a run directory was trained with (None: no config.yaml).
    A saved config this version cannot load (an older key set) is read as written, so it
    differs from every config of today and is never trained over."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    raw = read_config_file(path)
    try:
        return identity(config_from_dict(raw, name=run_dir.name).to_dict())
    except ConfigError:
        return identity(raw)


def differences(saved: dict, wanted: dict, limit: int = 3) -> str:
    """'objective.alpha: 0.5 there, 0.0 now; ...' for the first `limit` differing keys."""
    keys = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k, "<missing>") != wanted.get(k, "<missing>")]
    text = "; ".join(f"{k}: {saved.get(k, '<missing>')!r} there, {wanted.get(k, '<missing>')!r} now"
                     for k in keys[:limit])
    return text + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _state_in(run_dir: Path, cfg: Config, wanted: dict) -> tuple[str, int, str]:
    """-> (how, done, why not) for cfg in run_dir; how '' when the directory holds another run."""
    found = ckpt.checkpoint_dirs(run_dir)
    done = ckpt.step_of(found[-1]) if found else 0
    saved = saved_identity(run_dir)
    if saved is not None and saved != wanted:
        return "", done, f"{run_dir} holds a run of another config ({differences(saved, wanted)})"
    if found and saved is None:
        return "", done, f"{run_dir} holds checkpoints but no config.yaml"
    if done > cfg.train.steps:  # the same identity, yet a later checkpoint: copied in or edited by hand
        return "", done, f"{run_dir} holds {found[-1].name}, past train.steps={cfg.train.steps}"
    how = "reuse" if found and done == cfg.train.steps else "resume" if found else "fresh"
    return how, done, ""


def plan_run(cfg: Config) -> RunState:
    """Decide, without training, how `cfg` is brought to train.steps.

    cfg.run.dir is where the caller wants the run. A directory with no config.yaml and no
    checkpoint, or one whose config.yaml has the same identity, is this run's: a finished
    checkpoint at train.steps is reused, an earlier one resumed (run.resume=latest), none
    means a fresh start. A directory written by a different config is never trained over
    and never an error: the run goes beside it, to `<run.dir>-<identity hash>`, the same
    name at every call with this config, so a changed experiment keeps both runs and a
    rerun of either finds its own. (Refusing would make every changed option a manual
    clean-up; reusing would report a measurement of another model.)"""
    wanted = identity(cfg.to_dict())
    asked = Path(cfg.run.dir)
    how, done, why = _state_in(asked, cfg, wanted)
    if not how:
        beside = asked.with_name(f"{asked.name}-{identity_hash(cfg)}")
        how, done, why_beside = _state_in(beside, cfg, wanted)
        if not how:
            raise ConfigError(f"{why}, and so does {beside} ({why_beside}); choose another run directory")
        cfg.run.dir = str(beside)
    cfg.run.resume = "latest" if how == "resume" else ""
    return RunState(cfg, how, done, note=f"{why}: training beside it in {cfg.run.dir}" if why else "")


def ensure_trained(cfg: Config, hooks=(), say=None) -> RunState:
    """Bring `cfg`'s run to train.steps as `plan_run` decides: reuse, resume or fresh.

    Every process calls it (training uses all of them); the decision reads only the
    files, which no process writes before all have read them (a barrier). `say(msg)`
    (main process only) hears what is done. NonFiniteLoss and Stopped (SIGTERM / Ctrl-C,
    the step saved) propagate: the same call again resumes the stopped run."""
    from .distributed import processes
    from .trainer import train

    procs = processes()
    state = plan_run(cfg)
    procs.barrier()
    say = say if (say is not None and procs.main) else (lambda msg: None)
    if state.note:
        say(state.note)
    if state.how == "reuse":
        say(f"{state.run_dir}: finished at step {state.done}; reused, not trained")
        return state
    start = f"resuming at step {state.done}" if state.how == "resume" else "from scratch"
    say(f"{state.run_dir}: training {cfg.train.steps} steps, {start}")
    t0 = time.perf_counter()
    state.objective = train(cfg, list(hooks))
    state.seconds = time.perf_counter() - t0
    return state
