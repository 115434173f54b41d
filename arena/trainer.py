"""The one training loop. accelerate's launcher layout reaches it through
arena.distributed.processes(); the collectives are torch.distributed's.

`Trainer.train()` reads top to bottom: load the data, build (objective, optimizers,
scalers, EMA, batch stream), claim the run directory (arena/rundir.py: checked and
locked, run.resume decided), resume, start, then `loop()`: rounds of the phase
schedule until `train.steps`, with logging, sample grids, hooks and checkpoints between
rounds. One phase is `run_phase()`: forward, backward, average over processes, clip,
step, EMA. The update's pieces are in arena/updates.py, the stop signals in
arena/stops.py, the logged values in arena/metrics_log.py.

What a run guarantees (docs/core.md): a checkpoint never holds non-finite weights;
SIGTERM / SIGINT finish the current step, save, and raise `Stopped`; a resume continues
from the newest readable checkpoint with the config's optimizer hyper-parameters, and
metrics.jsonl keeps only the rows up to the step training starts from.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint as ckpt
from . import rundir
from .config import Config
from .data import build_dataset
from .distributed import Processes, processes
from .images import save_grid
from .metrics_log import MetricsLog, Tally, check_trackers_installed
from .objective import Objective, Phase, build_objective, data_info
from .registry import ConfigError
from .seeds import derive_seed
from .stops import NonFiniteLoss, NonFiniteWeights, Stopped, StopSignals, signal_name
from .stream import BatchStream
from .updates import (average_gradients, clip_gradients, ema_update, make_optimizer, set_requires_grad,
                      sync_buffers, use_gpu_paths)
from .version import __version__

__all__ = ["Hook", "NonFiniteLoss", "NonFiniteWeights", "Run", "Stopped", "Trainer", "clip_gradients",
           "make_optimizer", "train"]

# train.mixed_precision -> autocast dtype (None: no autocast); the config loader checked the value
_AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def train(cfg: Config, hooks: list[Hook] = ()) -> Objective:
    """Train `cfg` (fresh, or resumed from run.resume) -> the objective with its nets and EMA copies."""
    return Trainer(cfg, hooks).train()


class Trainer:
    """One run. `train()` is the whole of it; each part is a method below, so that a run
    can be followed (or a test can stop) between them, e.g. between `resume()` and `loop()`."""

    def __init__(self, cfg: Config, hooks: list[Hook] = ()):
        self.cfg, self.hooks = cfg, list(hooks)
        self.procs = processes()
        self.run_dir = Path(cfg.run.dir)
        self.step = 0  # finished steps

    def train(self) -> Objective:
        # a missing tracker package, a missing dataset or an option the objective refuses
        # (an unknown player) fails before the run directory is touched
        check_trackers_installed(self.cfg.train.log_with)
        self.load_data()
        self.build()
        try:
            # the run directory checked (no links, writable, one run in it) and locked for this
            # run; run.resume=auto decided: '' (fresh), 'latest' or a checkpoint directory
            with rundir.claim(self.cfg, self.procs) as resume:
                self.cfg = dataclasses.replace(self.cfg, run=dataclasses.replace(self.cfg.run, resume=resume))
                if resume and not self.resume():
                    return self.objective  # the run is complete
                self.start()
                self.loop()
        finally:
            self.close()
        return self.objective

    # -- build ------------------------------------------------------------------------
    def load_data(self) -> None:
        self.train_set = build_dataset(self.cfg.data, "train")
        self.info = data_info(self.train_set)

    def build(self) -> None:
        """The objective (the same weights on every process), optimizers, loss scalers, EMA
        copies and the batch stream of the loaded data."""
        cfg, procs = self.cfg, self.procs
        device = procs.device
        self.amp_dtype = _AUTOCAST[cfg.train.mixed_precision]
        torch.manual_seed(cfg.run.seed)
        self.objective = objective = build_objective(cfg, self.info)
        objective.nets.to(device)
        # The GPU path: tensor-core convolutions read NHWC, so 4-d weights (and so conv
        # outputs) and the batches (BatchStream) are channels_last; optimizers are fused.
        gpu_paths = use_gpu_paths(cfg.train.gpu_paths, device)
        if gpu_paths:
            objective.nets.to(memory_format=torch.channels_last)
        self.schedule = objective.schedule()
        self.optimizers = {name: make_optimizer(cfg, name, net) for name, net in objective.nets.items()}
        self.scalers = {p.name: torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
                        for p in self.schedule}
        self.ema_decay = objective.ema_decays()
        self.clip = {name: objective.clip_norm(name) for name in objective.nets}
        objective.ema = {name: copy.deepcopy(objective.nets[name]).requires_grad_(False).eval()
                         for name in self.ema_decay}
        # Per-process noise from here on (different z, prior samples, ... on each process).
        torch.manual_seed(derive_seed(cfg.run.seed, "process_noise", procs.rank))
        self.stream = BatchStream(self.train_set, cfg.train.batch_size, seed=cfg.run.seed, rank=procs.rank,
                                  world=procs.world, device=device, data_cfg=cfg.data, channels_last=gpu_paths)
        self.tally = Tally(device)
        self.log = MetricsLog(self.run_dir, False)  # opened by start()
        self.stop = StopSignals(procs.world)
        self.bar = None
        self.shown: dict[str, str] = {}  # hook values on the progress bar

    # -- resume ---------------------------------------------------------------------------
    def resume(self) -> bool:
        """Load nets, EMA, optimizers, scalers, the data position and the RNG from
        run.resume. -> False when the run is already complete (nothing to train)."""
        cfg, main = self.cfg, self.procs.main
        loaded = ckpt.load_checkpoint(self.run_dir, cfg.run.resume, self.procs.rank, warn=_warn if main else None,
                                      world=self.procs.world)
        where, saved = loaded.where, loaded.state
        self.check_resume_point(loaded)
        ckpt.restore(self.objective, saved, where, ema_players=self.ema_decay)
        for name, opt in self.optimizers.items():
            changed = ckpt.load_optimizer(opt, saved, name, where)
            if main and changed:  # e.g. a lower lr to continue with
                print(f"[arena] {name}: optimizer state from the checkpoint, settings from the config: "
                      f"{', '.join(changed)}")
        for name, scaler in self.scalers.items():
            if name in saved["scalers"]:
                scaler.load_state_dict(saved["scalers"][name])
        self.stream.load_state_dict(saved["data"])
        self.step = int(saved["step"])
        if loaded.rng is not None:
            ckpt.set_rng_state(loaded.rng)
        _say(main, f"resumed from {where} at step {self.step}")
        if self.step == cfg.train.steps:
            _say(main, f"nothing to train: the run is complete (train.steps={self.step}); raise train.steps "
                       f"to train further")
            return False
        if loaded.skipped:  # the same list on every process
            self.procs.barrier()  # every process is done reading them
            for bad in loaded.skipped if main else ():  # aside, so that rotation never keeps them
                _warn(f"moved the unreadable {bad.name} aside to {ckpt.move_aside(bad).name}")
        return True

    def check_resume_point(self, loaded: ckpt.Loaded) -> None:
        """Refuse a resume that would silently throw work away."""
        cfg, step = self.cfg, int(loaded.state["step"])
        if step > cfg.train.steps:
            raise ConfigError(f"train.steps: {cfg.train.steps} is below the step of {loaded.where} ({step}); "
                              f"set train.steps above {step} to train further")
        newer = [p for p in ckpt.checkpoint_dirs(self.run_dir)
                 if ckpt.step_of(p) > step and p not in loaded.skipped]
        if newer:
            raise ConfigError(
                f"run.resume: {loaded.where} (step {step}) is older than {newer[-1].name} of run.dir "
                f"{self.run_dir}; continuing would overwrite the newer checkpoints and metrics. To branch off at "
                f"step {step}, set run.dir to a new directory; to go back for good, first move "
                f"{', '.join(p.name for p in newer)} out of {self.run_dir / 'checkpoints'}")

    def start(self) -> None:
        """The run's files and banner, the phase counters, the log and the progress bar."""
        cfg, main, step, objective = self.cfg, self.procs.main, self.step, self.objective
        if main:
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
            n, per_step = len(self.train_set), objective.data_batches_per_step()
            print(f"[arena] {cfg.objective.name} on {self.train_set.describe()}; {self.procs.world} process(es) "
                  f"on {self.procs.device}; run dir {self.run_dir}")
            print(f"[arena] {per_step} data batch(es) of {cfg.train.batch_size} per step: {cfg.train.steps} steps "
                  f"read {per_step * cfg.train.steps * cfg.train.batch_size / n:.1f} passes over the {n} "
                  f"training images")
        # Phase run counts (lazy regularization reads them): a function of the step, so a
        # resumed run continues the same schedule without saving them.
        objective.calls = {name: step * runs for name, runs in objective.runs_per_step().items()}
        # a branch off another run's checkpoint keeps no earlier rows: none of them are its own
        self.log = MetricsLog(self.run_dir, main, start=0 if rundir.branches(self.run_dir, cfg.run.resume) else step,
                              log_with=cfg.train.log_with, config=cfg.to_dict(), name=cfg.name)
        if self.log.dropped:  # counted on the main process only
            _say(main, f"metrics.jsonl: dropped {self.log.dropped} rows after step {step} (steps this run does again)")
        from tqdm.auto import tqdm

        self.bar = tqdm(total=cfg.train.steps, initial=step, disable=not (main and cfg.train.progress),
                        desc=cfg.name, dynamic_ncols=True)
        self.fixed_z = None
        if objective.generates:
            self.fixed_z = objective.latent(cfg.train.num_samples, torch.Generator().manual_seed(cfg.run.seed))
        for net in objective.nets.values():
            net.train()
        self.t_last, self.steps_since = time.perf_counter(), 0
        self.last_batch = None  # the batch the last "fresh" phase drew, for "previous" phases
        self.run = Run(cfg, objective, self.procs)  # what hooks see

    # -- the loop -------------------------------------------------------------------------
    def loop(self) -> None:
        steps, every = self.cfg.train.steps, self.cfg.train
        self.stop.install()
        while self.step < steps:
            self.set_learning_rates()
            self.tally.step.fill_(self.step + 1)
            self.stop.start()
            for phase in self.schedule:
                for _ in range(phase.repeats):
                    self.run_phase(phase)
            self.step += 1  # before saving: a checkpoint at step s holds s finished steps
            self.steps_since += 1
            self.bar.update(1)
            stopping = self.agreed_stop()
            end = self.step == steps or stopping > 0
            if self.step % every.log_every == 0 or end:
                self.log_values()
            if not stopping:  # a preempted job has seconds, not a metric's minutes
                self.samples_and_hooks()
            if self.step % every.checkpoint_every == 0 or end:
                self.save()
            if stopping:
                raise Stopped(f"stopped by {signal_name(stopping)} after step {self.step}; saved "
                              f"{ckpt.final_dir(self.run_dir, self.step)}; continue with run.resume=latest",
                              stopping)

    def set_learning_rates(self) -> None:
        if self.cfg.optim.schedule == "linear":  # decay to 0 at train.steps
            for opt in self.optimizers.values():
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * (1.0 - self.step / self.cfg.train.steps)

    def agreed_stop(self) -> int:
        """A stop signal's number, the same on every process; 0 = none (or the run is
        complete: it finishes as usual, or its final samples and hooks are lost for good)."""
        stopping = self.stop.agreed()
        if stopping and self.step == self.cfg.train.steps:
            _say(self.procs.main, f"{signal_name(stopping)} at the last step: finishing the run")
            return 0
        return stopping

    # -- one phase ------------------------------------------------------------------------
    def run_phase(self, phase: Phase) -> None:
        """Forward, backward, average over processes, clip, step, EMA; the logged values
        are summed on the device (no per-step sync)."""
        objective, scaler = self.objective, self.scalers[phase.name]
        set_requires_grad(objective.nets, phase.players)
        if phase.data == "fresh":
            self.last_batch = next(self.stream)
        batch = None if phase.data == "none" else self.last_batch
        device_type = self.procs.device.type
        with torch.autocast(device_type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
            out = objective.loss(phase.name, batch, self.stream.batch_size)
        objective.calls[phase.name] += 1
        for name in phase.players:
            self.optimizers[name].zero_grad(set_to_none=True)
        scaler.scale(out["loss"].float()).backward()
        for name in phase.players:
            net, opt = objective.nets[name], self.optimizers[name]
            if self.procs.world > 1:
                average_gradients(net)
            if self.clip[name] > 0:
                scaler.unscale_(opt)
                clip_gradients(objective, name, self.clip[name])
            scaler.step(opt)
            if self.procs.world > 1:
                sync_buffers(net)
            if name in objective.ema:
                ema_update(objective.ema[name], net, self.ema_decay[name])
        scaler.update()
        self.tally.add(phase.name, out)

    # -- log, samples, hooks ----------------------------------------------------------------
    def check_finite(self) -> None:
        """Every process decides on the same numbers (one all-reduce, at log / save time):
        losses differ between processes, and one stopping alone would leave the others
        waiting in the next collective."""
        bad = self.tally.first_nonfinite(self.procs.world)
        if bad:
            raise NonFiniteLoss(f"loss '{bad[0]}' became non-finite (nan or inf) at step {bad[1]}; stopping. "
                                f"{_saved_so_far(self.cfg)}")

    def log_values(self) -> None:
        self.check_finite()
        now = time.perf_counter()
        values = self.tally.means()
        values["steps_per_s"] = self.steps_since / max(now - self.t_last, 1e-9)
        self.log(self.step, values)
        # each phase's loss, e.g. {critic: 1.36, generator: 0.71}
        self.bar.set_postfix({**{k[: -len("/loss")]: f"{v:.3g}" for k, v in values.items() if k.endswith("/loss")},
                              **self.shown})
        self.t_last, self.steps_since = now, 0

    def samples_and_hooks(self) -> None:
        step, last, main = self.step, self.step == self.cfg.train.steps, self.procs.main
        if self.fixed_z is not None and main and (step % self.cfg.train.sample_every == 0 or last):
            images = self.objective.generate(self.fixed_z.to(self.procs.device), ema=True)
            save_grid(images, self.run_dir / "samples" / f"step-{step:06d}.png",
                      nrow=int(math.ceil(math.sqrt(len(images)))))
        for hook in self.hooks:
            if (step % hook.every == 0 or last) and (hook.all_processes or main):
                values = hook.fn(self.run, step)
                if values:
                    self.log(step, values)
                    # the hooks' latest figures stay beside the losses on the bar
                    self.shown.update({k: f"{v:.3g}" for k, v in values.items() if isinstance(v, float)})

    # -- save -------------------------------------------------------------------------------
    def save(self) -> None:
        """checkpoint-<step>: written to a temporary directory by every process (its RNG),
        state.pt by the main one, then committed (renamed, older ones rotated)."""
        at, main, rank, objective = self.step, self.procs.main, self.procs.rank, self.objective
        self.check_finite()  # never write a checkpoint of diverged weights
        nets = {n: m.state_dict() for n, m in objective.nets.items()}
        ema = {n: m.state_dict() for n, m in objective.ema.items()}
        # losses can stay finite while an update blows the weights up
        bad = ckpt.nonfinite_tensors({**nets, **{f"ema {n}": s for n, s in ema.items()}})
        if bad:
            raise NonFiniteWeights(f"weights became non-finite (nan or inf) by step {at} in "
                                   f"{ckpt.describe_nonfinite(bad)}; stopping without saving them. "
                                   f"{_saved_so_far(self.cfg)}")
        self.together(lambda: ckpt.prepare(self.run_dir, at) if main else None)
        tmp = ckpt.tmp_dir(self.run_dir, at)
        state = {
            "step": at, "nets": nets, "ema": ema,
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "optimizer_types": {n: type(o).__name__ for n, o in self.optimizers.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "data": self.stream.state_dict(),
            "data_info": vars(self.info),
            "config": self.cfg.to_yaml(),
            "version": __version__,
            "world_size": self.procs.world,
        } if main else None

        def write() -> None:
            ckpt.write(tmp / f"rng-rank{rank}.pt", ckpt.rng_state())
            if main:
                ckpt.write(tmp / "state.pt", state)

        try:
            self.together(write)
        except ConfigError:
            if main:  # every process has stopped writing: the partial save goes
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.together(lambda: ckpt.commit(self.run_dir, at, self.cfg.train.keep_checkpoints) if main else None)

    def together(self, fn: Callable[[], object]) -> None:
        """fn on this process, then every process waits for the others and learns whether
        any failed: a ConfigError on one process (a save it could not write) is raised on
        every process, so none is left waiting in the next collective."""
        try:
            fn()
            mine = ""
        except ConfigError as err:
            mine = str(err)
        failed = [e for e in self.procs.gather_objects(mine) if e]  # a barrier with N processes
        if failed:
            raise ConfigError(failed[0])

    def close(self) -> None:
        self.stop.uninstall()
        self.stream.close()
        if self.bar is not None:
            self.bar.close()
        self.log.close()


def _say(main: bool, message: str) -> None:
    if main:
        print(f"[arena] {message}")


def _warn(message: str) -> None:
    print(f"[arena] warning: {message}", file=sys.stderr)


def _saved_so_far(cfg: Config) -> str:
    """What a user can go back to after a stop, as it really is on disk."""
    found = ckpt.checkpoint_dirs(cfg.run.dir)
    if found:
        return f"The newest checkpoint is {found[-1]} (step {ckpt.step_of(found[-1])})."
    return f"No checkpoint exists under {Path(cfg.run.dir) / 'checkpoints'}: none was saved before this step."
