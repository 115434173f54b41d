"""Checkpoints: one directory per save, written atomically, loaded without unpickling.

    run.dir/checkpoints/checkpoint-000500/state.pt       nets, optimizers, EMA, scalers,
                                                         counters, data position, config
    run.dir/checkpoints/checkpoint-000500/rng-rank0.pt   each process's RNG states

A save goes to `.tmp-checkpoint-000500/` and is renamed into place only when every
file is written, so a run killed mid-save leaves the previous checkpoint whole.
Everything stored is tensors, numbers, strings, lists and dicts, so loading uses
`torch.load(weights_only=True)`. A file that cannot be read (truncated, empty, not a
checkpoint, or a readable file that is not one of ours: a foreign `state.pt` lacking
'nets' or 'config') is named in a ConfigError; 'latest' falls back past such checkpoints
to the newest one that loads, and says which it skipped. A save that fails (a full
disk) removes its temporary directory and stops with a ConfigError naming the reason
and the newest checkpoint, which it left intact. A resume that finds no RNG file for
a process (deleted, or more processes than saved) says so: it continues, but not
bit-exactly.
"""
from __future__ import annotations

import copy
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .registry import ConfigError

_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under root/checkpoints, oldest first."""
    root = Path(root) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "state.pt").is_file()]
    return [p for _, p in sorted(found)]


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def check_writable(run_dir: str | Path) -> None:
    """Create run_dir and run_dir/checkpoints, and fail with a ConfigError unless both are
    directories this process can write to (tried, not guessed: permission bits say nothing
    to root or on many network file systems)."""
    for d in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if d.exists() and not d.is_dir():
            raise ConfigError(f"run.dir: {d} exists and is not a directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"run.dir: cannot write to {d} ({err.strerror or err})") from None


def move_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint out of the rotation (kept for inspection, not deleted)."""
    aside = path.with_name(f"{path.name}.unreadable")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.unreadable-{n}")
    os.replace(path, aside)
    return aside


def resolve_checkpoint(run_dir: str | Path, which: str, key: str = "run.resume") -> Path:
    """'latest' -> the newest complete checkpoint of run_dir; otherwise a checkpoint path."""
    if which == "latest":
        found = checkpoint_dirs(run_dir)
        if not found:
            raise ConfigError(f"{key}: no checkpoint found under {Path(run_dir) / 'checkpoints'}")
        return found[-1]
    path = Path(which)
    if not (path / "state.pt").is_file():
        raise ConfigError(f"{key}: {path} is not a checkpoint directory (no state.pt in it)")
    return path


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def tmp_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f".tmp-checkpoint-{step:06d}"


def final_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"checkpoint-{step:06d}"


def prepare(run_dir: str | Path, step: int) -> Path:
    """Main process: a fresh temporary directory for the save of `step`."""
    tmp = tmp_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise ConfigError(f"run.dir: cannot create {tmp} for the save of step {step} ({err.strerror or err})") from None
    return tmp


def write(path: Path, obj) -> None:
    """Write one file of a save in progress (under its .tmp-checkpoint-* directory). On an
    OS error (ENOSPC, EDQUOT, EIO) a ConfigError says what happened; the caller removes the
    temporary directory once every process has stopped writing to it (the trainer's main
    process), so the failed save leaves nothing behind. The checkpoints already committed
    are untouched, as a save only replaces them after every file is written."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        run_dir = path.parent.parent.parent
        found = checkpoint_dirs(run_dir)
        kept = (f"the newest checkpoint, {found[-1]}, is intact" if found
                else f"no checkpoint exists under {run_dir / 'checkpoints'} yet")
        raise ConfigError(f"run.dir: cannot write {path.parent.name.removeprefix('.tmp-')} to "
                          f"{run_dir / 'checkpoints'} ({err.strerror or err}); the partial save was removed and "
                          f"{kept}. Free space (or fix the file system) and continue with "
                          f"run.resume=latest") from None


def commit(run_dir: str | Path, step: int, keep: int) -> Path:
    """Main process: move the finished save into place, then drop the oldest beyond `keep`."""
    tmp, final = tmp_dir(run_dir, step), final_dir(run_dir, step)
    if final.exists():  # re-saving the same step (e.g. the end of a resumed run)
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    for stale in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(stale)
    for leftover in (Path(run_dir) / "checkpoints").glob(".tmp-checkpoint-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # from an earlier killed save
    return final


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, EOF, unpickling, OS errors all mean the same here: the file is unusable
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"checkpoint file {path} cannot be read (truncated, empty or not a checkpoint: "
                          f"{reason})") from None


# What every reader of a state.pt indexes, and the type it expects there.
_STATE_KEYS = {"step": int, "nets": dict, "optimizers": dict, "ema": dict, "scalers": dict, "data": dict, "data_info": dict,
               "config": str}


def check_state(state, path: Path) -> None:
    """A ConfigError naming the file and the first missing or mistyped key when a readable
    state.pt is not a checkpoint of this toolkit."""
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint file {path} is not a checkpoint of this toolkit (it holds a "
                          f"{type(state).__name__}, not a dict of nets, optimizers, ...)")
    for key, kind in _STATE_KEYS.items():
        if key not in state:
            raise ConfigError(f"checkpoint file {path} is not a checkpoint of this toolkit: it has no '{key}' "
                              f"(it has {', '.join(map(repr, list(state)[:8])) or 'no keys'})")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise ConfigError(f"checkpoint file {path} is not a checkpoint of this toolkit: its '{key}' is a "
                              f"{type(state[key]).__name__}, not a {kind.__name__}")


def load(path: Path, rank: int = 0) -> tuple[dict, dict | None]:
    """-> (state, this rank's RNG states or None). Every rank's RNG file is read, so that
    every process judges a checkpoint readable or not alike."""
    state = _read(path / "state.pt")
    check_state(state, path / "state.pt")
    rngs = {p.name: _read(p) for p in sorted(path.glob("rng-rank*.pt"))}
    return state, rngs.get(f"rng-rank{rank}.pt")


def missing_rng(where: Path, world: int) -> str | None:
    """A warning when a resume on `world` processes finds no RNG file for some of them."""
    missing = [f"rng-rank{r}.pt" for r in range(world) if not (where / f"rng-rank{r}.pt").is_file()]
    extra = sorted(p.name for p in where.glob("rng-rank*.pt") if p.name[len("rng-rank"):-3].isdigit()
                   and int(p.name[len("rng-rank"):-3]) >= world)
    if missing:
        return (f"{where} has no {', '.join(missing)}: those processes continue from a fresh random state, so "
                f"this resume is not exact (its noise differs from an unbroken run's)")
    if extra:
        return (f"{where} was saved by more processes than the {world} of this resume ({', '.join(extra)} are "
                f"not used), so this resume is not exact (its noise differs from an unbroken run's)")
    return None


@dataclass
class Loaded:
    where: Path
    state: dict
    rng: dict | None
    skipped: list[Path] = field(default_factory=list)  # newer checkpoints that could not be read


def load_checkpoint(run_dir: str | Path, which: str, rank: int = 0, key: str = "run.resume",
                    warn: Callable[[str], None] | None = None, world: int | None = None) -> Loaded:
    """Resolve and load `which` ('latest' or a checkpoint directory). 'latest' is the newest
    checkpoint that loads: unreadable newer ones are reported through `warn` and skipped;
    a named directory that cannot be read is an error naming the file. With `world` (a
    resume on that many processes), RNG files missing for any of them are reported
    through `warn`."""
    loaded = _load_checkpoint(run_dir, which, rank, key, warn)
    message = missing_rng(loaded.where, world) if world else None
    if message and warn is not None:
        warn(message)
    return loaded


def _load_checkpoint(run_dir, which, rank, key, warn) -> Loaded:
    if which != "latest":
        where = resolve_checkpoint(run_dir, which, key)
        try:
            return Loaded(where, *load(where, rank))
        except ConfigError as err:
            raise ConfigError(f"{key}: {err}") from None
    resolve_checkpoint(run_dir, which, key)  # fails when there is none at all
    found, skipped = checkpoint_dirs(run_dir), []
    for where in reversed(found):
        try:
            state, rng = load(where, rank)
        except ConfigError as err:
            skipped.append(where)
            if warn is not None:
                warn(f"{err}; skipping {where.name}")
            continue
        return Loaded(where, state, rng, skipped)
    raise ConfigError(f"{key}: none of the {len(found)} checkpoints under {Path(run_dir) / 'checkpoints'} "
                      f"can be read")


_HYPER_PARAMETERS = ("lr", "betas", "weight_decay", "momentum")
# How this machine runs the update (fused on CUDA), not a setting of the run: kept as built.
_IMPLEMENTATION = ("fused", "foreach", "capturable")


def load_optimizer(opt: torch.optim.Optimizer, saved: dict, player: str, where: Path) -> list[str]:
    """Restore a player's optimizer state (moments, step counts) from a checkpoint's state,
    then put back the hyper-parameters the config gave `opt` (a lower lr to continue
    with is common). -> the settings that differ from the checkpoint's, e.g.
    ['lr 0.0002 -> 0.0001']. A different kind of optimizer is refused: its state does not carry."""
    state = saved["optimizers"][player]
    kind = saved.get("optimizer_types", {}).get(player) or _kind_of(state)
    if kind != type(opt).__name__:
        from .updates import OPTIMIZERS

        names = {cls.__name__: name for name, (cls, _) in OPTIMIZERS.items()}  # class -> optim.name
        was, now = names.get(kind, kind), names.get(type(opt).__name__, type(opt).__name__)
        raise ConfigError(f"optim.name: {where} holds {was} state for player '{player}' but the config asks for "
                          f"{now}; an optimizer's state does not carry over to another kind. Resume with "
                          f"optim.name={was}, or start a fresh run (another run.dir, no run.resume)")
    wanted = [{k: g[k] for k in _HYPER_PARAMETERS if k in g} for g in opt.param_groups]
    built = [{k: g[k] for k in _IMPLEMENTATION if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, flags in zip(opt.param_groups, built):
        group.update(flags)
        for p in group["params"]:  # moments in the parameter's layout (a CPU run's NCHW state, channels_last nets)
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
        if group.get("fused") or group.get("capturable"):  # these keep their step count on the device
            for p in group["params"]:
                if "step" in opt.state.get(p, {}):
                    opt.state[p]["step"] = opt.state[p]["step"].to(p.device, torch.float32)
    changed = []
    for group, settings in zip(opt.param_groups, wanted):
        for k, v in settings.items():
            # a scheduled lr was saved decayed; its base is what the config sets
            was = group.get("initial_lr", group[k]) if k == "lr" else group[k]
            old = tuple(was) if isinstance(was, (list, tuple)) else was
            new = tuple(v) if isinstance(v, (list, tuple)) else v
            if old != new:
                changed.append(f"{k} {old} -> {new}")
            group[k] = v
        if "lr" in settings:
            group["initial_lr"] = settings["lr"]
    return changed


def _kind_of(state: dict) -> str:
    """Checkpoints written before the optimizer's class was stored: tell it by its settings."""
    group = state["param_groups"][0] if state["param_groups"] else {}
    if "momentum" in group:
        return "SGD"
    return "AdamW" if group.get("decoupled_weight_decay") else "Adam"


def nonfinite_tensors(groups: dict[str, dict]) -> dict[str, list[str]]:
    """{group name: {tensor name: tensor}} -> {group name: names of floating tensors holding
    nan or inf}; only groups with any. One host sync for all tensors."""
    named = [(g, k, t) for g, tensors in groups.items() for k, t in tensors.items()
             if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not named:
        return {}
    ok = torch.stack([torch.isfinite(t).all().to(named[0][2].device) for _, _, t in named]).tolist()
    bad: dict[str, list[str]] = {}
    for (g, k, _), good in zip(named, ok):
        if not good:
            bad.setdefault(g, []).append(k)
    return bad


def describe_nonfinite(bad: dict[str, list[str]], limit: int = 4) -> str:
    """'G: 7 tensors (a, b, c, d, ...); ema G: 1 tensor (x)'."""
    parts = []
    for g, names in bad.items():
        shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
        parts.append(f"{g}: {len(names)} tensor{'s' if len(names) > 1 else ''} ({shown})")
    return "; ".join(parts)


def weight_groups(state: dict) -> dict[str, dict]:
    """The weights of a saved state (nets and EMA copies), grouped for nonfinite_tensors."""
    return {**state["nets"], **{f"ema {n}": s for n, s in state.get("ema", {}).items()}}


def restore(objective, saved: dict, where: Path, ema_players: Iterable[str] | None = None) -> None:
    """Load a saved state's weights into an objective: every net (a missing or reshaped one
    is an error naming it), then the EMA copies of `ema_players` (None: those the checkpoint
    has), made where the objective has none yet; a copy the checkpoint lacks starts from
    its net. The trainer's resume and arena.runs.load_run both restore through here."""
    for name, net in objective.nets.items():
        if name not in saved["nets"]:
            raise ConfigError(f"checkpoint {where} has no player '{name}' (it has {', '.join(saved['nets'])})")
        check_compatible(name, saved["nets"][name], net, where)
        net.load_state_dict(saved["nets"][name])
    for name in saved["ema"] if ema_players is None else ema_players:
        if name not in objective.ema:
            objective.ema[name] = copy.deepcopy(objective.nets[name]).requires_grad_(False)
        objective.ema[name].load_state_dict(saved["ema"].get(name, objective.nets[name].state_dict()))


def check_compatible(name: str, saved: dict, net: torch.nn.Module, where: Path) -> None:
    """Fail with the differing parameter names and shapes when a net changed shape."""
    current = net.state_dict()
    problems = []
    for key in sorted(set(saved) | set(current)):
        if key not in current:
            problems.append(f"'{key}' is in the checkpoint but not in the configured net")
        elif key not in saved:
            problems.append(f"'{key}' is in the configured net but not in the checkpoint")
        elif tuple(saved[key].shape) != tuple(current[key].shape):
            problems.append(f"'{key}' has shape {tuple(saved[key].shape)} in the checkpoint, "
                            f"{tuple(current[key].shape)} in the config")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ConfigError(f"checkpoint {where} does not fit net '{name}' built from the config: {shown}")
