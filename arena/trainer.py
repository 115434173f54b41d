"""The one training loop. The only module that imports accelerate.

Reads top to bottom in `train()`: processes and seeds, data, objective, optimizers,
resume, then rounds of the phase schedule until `train.steps`, with logging, sample
grids, hooks and checkpoints between rounds. Gradients are averaged across processes
here (not by DistributedDataParallel), because the penalties take gradients w.r.t.
inputs with `create_graph=True`, which DDP's reducer does not support.

What a run guarantees (docs/core.md): a checkpoint never holds non-finite weights;
SIGTERM / SIGINT finish the current step, save, and raise `Stopped`; a resume continues
from the newest readable checkpoint with the config's optimizer hyper-parameters, and
metrics.jsonl keeps only the rows up to the step training starts from.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import broadcast, reduce
from torch import Tensor, nn

from . import checkpoint as ckpt
from . import rundir
from .config import Config
from .data import build_dataset
from .distributed import Processes, processes
from .images import save_grid
from .objective import Objective, Phase, build_objective, data_info
from .registry import ConfigError
from .seeds import derive_seed
from .stream import BatchStream
from .version import __version__


class NonFiniteLoss(RuntimeError):
    pass


class NonFiniteWeights(NonFiniteLoss):
    """The losses were finite but an update left nan/inf in the weights (e.g. a huge lr)."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT: the run finished its step, saved a checkpoint and stopped. A
    KeyboardInterrupt, so callers that treat Ctrl-C as "stop" keep doing so."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass
class Hook:
    """Called on the main process every `every` steps (and on every process when
    `all_processes`, for hooks that split work, e.g. generating metric samples)."""

    every: int
    fn: Callable[["Run", int], dict | None]
    all_processes: bool = False


@dataclass
class Run:
    """What hooks see: the live objective and the process layout."""

    cfg: Config
    objective: Objective
    procs: Processes


def make_optimizer(cfg: Config, player: str, net: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    over = o.players.get(player)
    lr = over.lr if over and over.lr is not None else o.lr
    betas = over.betas if over and over.betas is not None else o.betas
    wd = over.weight_decay if over and over.weight_decay is not None else o.weight_decay
    params = [p for p in net.parameters() if p.requires_grad]
    # On CUDA the fused update: one kernel for all of a player's parameters instead of a
    # handful per tensor, and a GradScaler steps it without reading found-inf on the host.
    # Elsewhere torch's default (the CPU path as it always was).
    fast = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if o.name == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=wd, **fast)
    elif o.name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=wd, **fast)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=betas[0], weight_decay=wd, **fast)
    for g in opt.param_groups:
        # the schedule's base (torch's name for it): saved with the state, so that a resume
        # compares the config's lr with the saved base, not with the decayed lr of the last step
        g["initial_lr"] = g["lr"]
    return opt


def clip_gradients(objective: Objective, player: str, limit: float) -> None:
    """Rescale the gradient of each of the player's clip groups to norm <= limit."""
    for part in objective.clip_groups(player):
        torch.nn.utils.clip_grad_norm_(part.parameters(), limit)


class _Logger:
    """metrics.jsonl (+ TensorBoard when installed) on the main process."""

    def __init__(self, run_dir: Path, enabled: bool, start: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            self.dropped = rundir.drop_metrics_after(self.path, start)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1)
            except ImportError:  # tensorboard is optional
                self.tb = None

    def __call__(self, step: int, values: dict) -> None:
        if not self.enabled or not values:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _set_requires_grad(objective: Objective, players: tuple[str, ...]) -> None:
    # Players that do not step in this phase get no weight gradients (saves the
    # backward through them; penalties still differentiate w.r.t. inputs).
    for name, net in objective.nets.items():
        net.requires_grad_(name in players)


@torch.no_grad()
def _ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


def train(cfg: Config, hooks: list[Hook] = ()) -> Objective:
    procs = processes()
    train_set = build_dataset(cfg.data, "train")  # a wrong data root fails before the run dir is touched
    # the run directory checked and locked for this run; run.resume=auto decided
    with rundir.claim(cfg, procs) as resume:
        return _train(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=resume)), hooks, procs,
                      train_set)


def _train(cfg: Config, hooks: list[Hook], procs: Processes, train_set) -> Objective:
    # -- processes, device, seeds ------------------------------------------------
    rank, world, device, main = procs.rank, procs.world, procs.device, procs.main
    run_dir = Path(cfg.run.dir)
    amp_dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.mixed_precision]

    # -- data and objective (same weights on every process) ---------------------
    info = data_info(train_set)
    torch.manual_seed(cfg.run.seed)
    objective = build_objective(cfg, info)
    objective.nets.to(device)
    if device.type == "cuda":
        # Tensor-core convolutions read NHWC: 4-d weights (and so conv outputs) and the
        # batches (BatchStream) in channels_last. The CPU keeps the default layout.
        objective.nets.to(memory_format=torch.channels_last)
    schedule = objective.schedule()
    optimizers = {name: make_optimizer(cfg, name, net) for name, net in objective.nets.items()}
    scalers = {p.name: torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16) for p in schedule}
    ema_decay = objective.ema_decays()
    clip = {name: objective.clip_norm(name) for name in objective.nets}
    objective.ema = {name: copy.deepcopy(objective.nets[name]).requires_grad_(False).eval() for name in ema_decay}
    # Per-process noise from here on (different z, prior samples, ... on each process).
    torch.manual_seed(derive_seed(cfg.run.seed, "process_noise", rank))
    stream = BatchStream(train_set, cfg.train.batch_size, seed=cfg.run.seed, rank=rank, world=world,
                         device=device, data_cfg=cfg.data)

    # -- resume --------------------------------------------------------------------
    step, unreadable = 0, []
    if cfg.run.resume:
        loaded = ckpt.load_checkpoint(run_dir, cfg.run.resume, rank, warn=_warn if main else None, world=world)
        where, saved, rng, unreadable = loaded.where, loaded.state, loaded.rng, loaded.skipped
        _check_resume_point(cfg, run_dir, loaded)
        ckpt.restore(objective, saved, where, ema_players=ema_decay)
        for name in objective.nets:
            changed = ckpt.load_optimizer(optimizers[name], saved, name, where)
            if main and changed:  # e.g. a lower lr to continue with
                print(f"[arena] {name}: optimizer state from the checkpoint, settings from the config: "
                      f"{', '.join(changed)}")
        for name, scaler in scalers.items():
            if name in saved["scalers"]:
                scaler.load_state_dict(saved["scalers"][name])
        stream.load_state_dict(saved["data"])
        step = int(saved["step"])
        if rng is not None:
            ckpt.set_rng_state(rng)
        if main:
            print(f"[arena] resumed from {where} at step {step}")
        if step == cfg.train.steps:
            if main:
                print(f"[arena] nothing to train: the run is complete (train.steps={step}); raise train.steps "
                      f"to train further")
            return objective

    if unreadable:  # the same list on every process
        procs.barrier()  # every process is done reading them
        if main:
            for bad in unreadable:  # aside, so that rotation never keeps them in place of good ones
                _warn(f"moved the unreadable {bad.name} aside to {ckpt.move_aside(bad).name}")
    if main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        print(f"[arena] {cfg.objective.name} on {train_set.describe()}; {world} process(es) on {device}; "
              f"run dir {run_dir}")
        per_step = objective.data_batches_per_step()
        print(f"[arena] {per_step} data batch(es) of {cfg.train.batch_size} per step: {cfg.train.steps} steps read "
              f"{per_step * cfg.train.steps * cfg.train.batch_size / len(train_set):.1f} passes over the "
              f"{len(train_set)} training images")
    # Phase run counts (lazy regularization reads them): a function of the step, so a
    # resumed run continues the same schedule without saving them.
    objective.calls = {name: step * runs for name, runs in objective.runs_per_step().items()}
    # a branch off another run's checkpoint keeps no earlier rows: none of them are its own
    log = _Logger(run_dir, main, start=0 if rundir.branches(run_dir, cfg.run.resume) else step)
    if main and log.dropped:
        print(f"[arena] metrics.jsonl: dropped {log.dropped} rows after step {step} (steps this run does again)")
    run = Run(cfg, objective, procs)

    # -- one phase: forward, backward, average over processes, clip, step, EMA ----------
    sums: dict[str, Tensor] = {}  # running sums since the last log, on the device
    counts: dict[str, int] = {}
    first_bad: dict[str, Tensor] = {}
    step_t = torch.zeros((), device=device, dtype=torch.long)

    last_batch = None  # the batch the last "fresh" phase drew, for "previous" phases

    def run_phase(phase: Phase) -> None:
        nonlocal last_batch
        _set_requires_grad(objective, phase.players)
        if phase.data == "fresh":
            last_batch = next(stream)
        batch = None if phase.data == "none" else last_batch
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
        with ctx:
            out = objective.loss(phase.name, batch, stream.batch_size)
        objective.calls[phase.name] += 1
        loss = out["loss"].float()
        scaler = scalers[phase.name]
        for name in phase.players:
            optimizers[name].zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for name in phase.players:
            net, opt = objective.nets[name], optimizers[name]
            if world > 1:
                _average_gradients(net)
            if clip[name] > 0:
                scaler.unscale_(opt)
                clip_gradients(objective, name, clip[name])
            scaler.step(opt)
            if world > 1:
                _sync_buffers(net)
            if name in objective.ema:
                _ema_update(objective.ema[name], net, ema_decay[name])
        scaler.update()
        # Accumulate on the device; read back only at log time (no per-step sync).
        for key, value in out.items():
            k = f"{phase.name}/{key}"
            v = value.detach().float()
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
            bad = first_bad.get(k)
            if bad is None:
                bad = first_bad[k] = torch.full((), -1, device=device, dtype=torch.long)
            first_bad[k] = torch.where((bad < 0) & ~torch.isfinite(v), step_t, bad)

    def check_finite() -> None:
        # Every process decides on the same numbers (one all-reduce, at log / save time):
        # losses differ between processes, and one stopping alone would leave the others
        # waiting in the next collective.
        keys = sorted(first_bad)
        if not keys:
            return
        firsts = torch.stack([first_bad[k] for k in keys])
        if world > 1:
            never = torch.iinfo(torch.long).max  # a process with no bad step must not win the MIN
            firsts = torch.where(firsts < 0, never, firsts)
            torch.distributed.all_reduce(firsts, op=torch.distributed.ReduceOp.MIN)
            firsts = torch.where(firsts == never, -1, firsts)
        bad = _first_nonfinite(dict(zip(keys, firsts.tolist())))
        if bad:
            raise NonFiniteLoss(
                f"loss '{bad[0]}' became non-finite (nan or inf) at step {bad[1]}; stopping. {_saved_so_far(cfg)}"
            )

    def save(at: int) -> None:
        check_finite()  # never write a checkpoint of diverged weights
        weights = {**{n: m.state_dict() for n, m in objective.nets.items()},
                   **{f"ema {n}": m.state_dict() for n, m in objective.ema.items()}}
        bad = ckpt.nonfinite_tensors(weights)  # losses can stay finite while an update blows the weights up
        if bad:
            raise NonFiniteWeights(f"weights became non-finite (nan or inf) by step {at} in "
                                   f"{ckpt.describe_nonfinite(bad)}; stopping without saving them. "
                                   f"{_saved_so_far(cfg)}")
        if main:
            ckpt.prepare(run_dir, at)
        procs.barrier()
        tmp = ckpt.tmp_dir(run_dir, at)
        ckpt.write(tmp / f"rng-rank{rank}.pt", ckpt.rng_state())
        if main:
            ckpt.write(tmp / "state.pt", {
                "step": at,
                "nets": {n: m.state_dict() for n, m in objective.nets.items()},
                "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                "optimizer_types": {n: type(o).__name__ for n, o in optimizers.items()},
                "ema": {n: m.state_dict() for n, m in objective.ema.items()},
                "scalers": {n: s.state_dict() for n, s in scalers.items()},
                "data": stream.state_dict(),
                "data_info": vars(info),
                "config": cfg.to_yaml(),
                "version": __version__,
                "world_size": world,
            })
        procs.barrier()
        if main:
            ckpt.commit(run_dir, at, cfg.train.keep_checkpoints)
        procs.barrier()

    # -- the loop ---------------------------------------------------------------------
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.train.steps, initial=step, disable=not (main and cfg.train.progress),
               desc=cfg.name, dynamic_ncols=True)
    fixed_z = None
    if objective.generates:
        fixed_z = objective.latent(cfg.train.num_samples, torch.Generator().manual_seed(cfg.run.seed))
    for net in objective.nets.values():
        net.train()
    t_last, steps_since = time.perf_counter(), 0
    stop = _StopSignals(world)
    try:
        stop.install()
        while step < cfg.train.steps:
            if cfg.optim.schedule == "linear":  # decay to 0 at train.steps
                for opt in optimizers.values():
                    for g in opt.param_groups:
                        g["lr"] = g["initial_lr"] * (1.0 - step / cfg.train.steps)
            step_t.fill_(step + 1)  # 1-based, as logged: step s is the s-th update
            stop.start()
            for phase in schedule:
                for _ in range(phase.repeats):
                    run_phase(phase)
            step += 1  # before saving: a checkpoint at step s holds s finished steps
            steps_since += 1
            bar.update(1)
            stopping = stop.agreed()  # a signal's number, the same on every process; 0 = none
            if stopping and step == cfg.train.steps:
                # the run is complete: finish it as usual, or its final samples and hooks are
                # lost for good (a rerun has nothing to train)
                if main:
                    print(f"[arena] {signal.Signals(stopping).name} at the last step: finishing the run")
                stopping = 0
            end = step == cfg.train.steps or stopping > 0

            if step % cfg.train.log_every == 0 or end:
                check_finite()
                now = time.perf_counter()
                values = {k: float(v.item()) / counts[k] for k, v in sums.items()}
                values["steps_per_s"] = steps_since / max(now - t_last, 1e-9)
                log(step, values)
                # each phase's loss, e.g. {critic: 1.36, generator: 0.71}
                bar.set_postfix({k[: -len("/loss")]: f"{v:.3g}" for k, v in values.items() if k.endswith("/loss")})
                sums.clear()
                counts.clear()
                t_last, steps_since = now, 0
            # A stop skips samples and hooks: a preempted job has seconds, not a metric's minutes.
            if fixed_z is not None and main and not stopping and (step % cfg.train.sample_every == 0
                                                                  or step == cfg.train.steps):
                images = objective.generate(fixed_z.to(device), ema=True)
                save_grid(images, run_dir / "samples" / f"step-{step:06d}.png",
                          nrow=int(math.ceil(math.sqrt(len(images)))))
            for hook in hooks:
                if (step % hook.every == 0 or step == cfg.train.steps) and not stopping:
                    if hook.all_processes or main:
                        values = hook.fn(run, step)
                        if values:
                            log(step, values)
            if step % cfg.train.checkpoint_every == 0 or end:
                save(step)
            if stopping:
                raise Stopped(f"stopped by {signal.Signals(stopping).name} after step {step}; saved "
                              f"{ckpt.final_dir(run_dir, step)}; continue with run.resume=latest", stopping)
    finally:
        stop.uninstall()
        stream.close()
        bar.close()
        log.close()
    return objective


class _StopSignals:
    """SIGTERM (a scheduler's notice before preemption) and SIGINT (Ctrl-C) set a flag; the
    loop finishes the step, saves and raises Stopped. In a single process a second Ctrl-C
    stops at once (without saving); with N processes the launcher forwards the signals, so
    repeats are absorbed there. Repeated SIGTERMs are always absorbed (a scheduler may
    signal both the launcher and the workers).

    With N processes the flags are shared by an asynchronous all-reduce (MAX) on a CPU group
    of its own, started as a step begins and read as it ends: the step never waits for it,
    and every process stops after the same step. A signal that comes during a step stops
    the run after the next one."""

    def __init__(self, world: int):
        self.world, self.signum, self._previous = world, 0, {}
        self._group = self._pending = self._flag = None

    def install(self) -> None:
        if self.world > 1:
            # gloo: reading a flag back from the GPU would make the step wait for it
            self._group = torch.distributed.new_group(backend="gloo")
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum
        if signum == signal.SIGINT and self.world == 1:
            signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        # a pending exchange means this process failed inside a step: leave the group to the exit
        if self._group is not None and self._pending is None:
            torch.distributed.destroy_process_group(self._group)  # one group per train() call, not a leak
        self._group = self._pending = None

    def start(self) -> None:
        """As a step begins: send this process's flag (0: no signal) without waiting."""
        if self.world > 1:
            self._flag = torch.tensor([self.signum], dtype=torch.int64)
            self._pending = torch.distributed.all_reduce(self._flag, op=torch.distributed.ReduceOp.MAX,
                                                         group=self._group, async_op=True)

    def agreed(self) -> int:
        """As the step ends: the signal any process had sent at its start (0: none), the same
        on every process; in a single process, the signal received so far."""
        if self.world == 1:
            return self.signum
        self._pending.wait()  # long done by now: it ran beside the step
        self._pending = None
        return int(self._flag.item())  # a CPU tensor: no device sync


def _first_nonfinite(first_bad: dict[str, int]) -> tuple[str, int] | None:
    """{key: first step its value was non-finite, -1: never} -> the first to go (the others
    follow from it; ties by name, so every process names the same), or None."""
    bad = sorted((step, key) for key, step in first_bad.items() if step >= 0)
    return (bad[0][1], bad[0][0]) if bad else None


def _warn(message: str) -> None:
    print(f"[arena] warning: {message}", file=sys.stderr)


def _saved_so_far(cfg: Config) -> str:
    """What a user can go back to after a stop, as it really is on disk."""
    found = ckpt.checkpoint_dirs(cfg.run.dir)
    if found:
        return f"The newest checkpoint is {found[-1]} (step {ckpt.step_of(found[-1])})."
    return f"No checkpoint exists under {Path(cfg.run.dir) / 'checkpoints'}: none was saved before this step."


def _check_resume_point(cfg: Config, run_dir: Path, loaded: ckpt.Loaded) -> None:
    """Refuse a resume that would silently throw work away."""
    step = int(loaded.state["step"])
    if step > cfg.train.steps:
        raise ConfigError(f"train.steps: {cfg.train.steps} is below the step of {loaded.where} ({step}); "
                          f"set train.steps above {step} to train further")
    newer = [p for p in ckpt.checkpoint_dirs(run_dir) if ckpt.step_of(p) > step and p not in loaded.skipped]
    if newer:
        raise ConfigError(
            f"run.resume: {loaded.where} (step {step}) is older than {newer[-1].name} of run.dir {run_dir}; "
            f"continuing would overwrite the newer checkpoints and metrics. To branch off at step {step}, set "
            f"run.dir to a new directory; to go back for good, first move {', '.join(p.name for p in newer)} "
            f"out of {run_dir / 'checkpoints'}")


def _average_gradients(net: nn.Module) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters() if p.requires_grad]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    flat = reduce(flat, reduction="mean")
    offset = 0
    for p in (p for p in net.parameters() if p.requires_grad):
        n = p.numel()
        # in p's own layout (channels_last on CUDA): fused optimizers need grads, moments
        # and parameters alike, and autograd's own grads follow the parameter's strides
        p.grad = torch.empty_like(p).copy_(flat[offset : offset + n].view(p.shape))
        offset += n


def _sync_buffers(net: nn.Module) -> None:
    # BatchNorm statistics are per process; keep rank 0's so every copy is identical
    # (one flat broadcast; integer counters advance alike on every process).
    bufs = [b for b in net.buffers() if b.dtype.is_floating_point]
    if bufs:
        flat = broadcast(torch.cat([b.flatten() for b in bufs]), from_process=0)
        offset = 0
        for b in bufs:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()
