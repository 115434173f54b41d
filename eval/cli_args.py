"""Command-line values the eval CLIs and benchmarks share: a device, a seed, a count, a rate.

Each is an argparse `type=`: a bad value ends the command at parse time with
"error: argument --flag: <what is wrong and what is allowed>" and exit status 2,
before anything is loaded, trained or written.

    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--k", type=count_arg(1), default=8)
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

import torch

from arena.registry import ConfigError

# torch takes seeds below 2**64, numpy and scikit-learn below 2**32, and callers add offsets
# (seed + 1 for a second split, seed + r for the r-th run): 0 .. 2**31 - 1 suits them all.
SEED_MAX = 2**31 - 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_device(text: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'mps' as a torch.device, only where that device exists;
    else ConfigError saying what this machine has."""
    try:
        device = torch.device(str(text).strip())
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"'{text}' is not a device; choose cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"'{text}': torch sees no CUDA GPU on this machine (torch.cuda.is_available() "
                              f"is False); use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"'{text}': this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
        return device
    if device.type == "mps":
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return device
        raise ConfigError(f"'{text}': torch sees no MPS device on this machine; use cpu")
    raise ConfigError(f"'{text}': device type '{device.type}' is not supported here; choose cpu, cuda, cuda:N or mps")


def _argparse_type(check: Callable[[str], object], name: str) -> Callable[[str], object]:
    """`check` as an argparse type: its ConfigError becomes argparse's error message."""
    def parse(text: str):
        try:
            return check(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


# the device's name ('cuda:0'), like default_device(): it goes into JSON records and settings
device_arg = _argparse_type(lambda text: str(parse_device(text)), "device")


def _integer(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigError(f"'{text}' is not a whole number") from None


def _seed(text: str) -> int:
    seed = _integer(text)
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"a seed is a whole number from 0 to {SEED_MAX} (2**31 - 1), got {seed}")
    return seed


seed_arg = _argparse_type(_seed, "seed")


def count_arg(least: int, most: int | None = None) -> Callable[[str], int]:
    """A whole number in [least, most] (most: None = no upper bound)."""
    def check(text: str) -> int:
        n = _integer(text)
        if n < least or (most is not None and n > most):
            allowed = f">= {least}" if most is None else f"from {least} to {most}"
            raise ConfigError(f"must be a whole number {allowed}, got {n}")
        return n

    return _argparse_type(check, "count")


def _rate(text: str) -> float:
    try:
        x = float(str(text).strip())
    except ValueError:
        raise ConfigError(f"'{text}' is not a number") from None
    if not (math.isfinite(x) and x > 0):
        raise ConfigError(f"must be a finite number > 0, got {text}")
    return x


positive_float_arg = _argparse_type(_rate, "number")
