"""How a training run stops early: the exceptions it raises, and the stop signals.

Light on purpose (torch only): command lines map these exceptions to exit codes
(arena.cli) without importing the trainer.
"""
from __future__ import annotations

import signal
import threading

import torch


class NonFiniteLoss(RuntimeError):
    """A logged loss became nan or inf; the run stopped without saving past it."""


class NonFiniteWeights(NonFiniteLoss):
    """The losses were finite but an update left nan/inf in the weights (e.g. a huge lr)."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT: the run finished its step, saved a checkpoint and stopped. A
    KeyboardInterrupt, so callers that treat Ctrl-C as "stop" keep doing so."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
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
            torch.distributed.destroy_process_group(self._group)  # one group per run, not a leak
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


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
