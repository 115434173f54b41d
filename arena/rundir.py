"""The run directory: one trainer at a time, nothing written through a link, one run per
directory, and where a run starts from.

    with claim(cfg, procs) as resume:   # '' (fresh), 'latest' or a checkpoint directory
        ...train...

`claim` runs its checks on the main process, before anything is written to the run
directory (the trainer loads the data and builds the objective first, so bad data or
options leave nothing behind), and every process raises the same ConfigError (or gets
the same answer):

- Links. The files a run writes (config.yaml, metrics.jsonl, .lock, checkpoints/,
  samples/, trackers/, and the entries of checkpoints/ and samples/) must not be symbolic
  links: the toolkit would write, rotate or delete through them, outside the run
  directory. They are refused, naming the link and its target. `run.dir` itself (or a
  folder above it) may be a link: the run directory is then where it points.
- A lock. `run.dir/.lock` is locked (POSIX `lockf`) by the main process for the whole
  run; a second trainer on the same directory, in this process or another, is refused,
  naming the holder. The kernel drops the lock when its process dies, however it dies
  (SIGKILL, OOM), so a killed run never leaves it stuck; DataLoader workers forked by
  the holder do not inherit it. On a file system without locks the run goes on, with
  a warning. With `accelerate launch` across nodes only global rank 0 locks, so the
  run directory must be on a file system that every node shares (and that locks
  across clients: NFSv4, Lustre, GPFS).
- One run per directory. A fresh start where checkpoints exist, or a resume from
  another directory's checkpoint into a directory that holds checkpoints of its own,
  is refused: rotation would delete one run's checkpoints in favour of the other's,
  and metrics.jsonl would mix both.
- `run.resume=auto`: 'latest' when the directory holds a checkpoint, a fresh start
  when it holds none. The same command can therefore be rerun after a requeue.

`read_metrics` / `drop_metrics_after` read metrics.jsonl tolerating any line: a line
that is not a JSON object (a row cut short, a stray edit, bytes that are not UTF-8) is
skipped by readers and kept as it is by the rewrite.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from . import checkpoint as ckpt
from .registry import ConfigError

LOCK_NAME = ".lock"
# what a run writes at the top of its directory (files and folders)
TRACKERS = "trackers"  # the folder of train.log_with's trackers (TensorBoard's event files, ...)
WRITTEN = ("config.yaml", "metrics.jsonl", LOCK_NAME, "checkpoints", "samples", TRACKERS)
_HELD: dict[Path, int] = {}  # run directories this process has locked -> the lock file's descriptor


def check_links(run_dir: str | Path) -> None:
    """Refuse a run directory in which something the toolkit writes is a symbolic link."""
    run_dir = Path(run_dir)
    names = [run_dir / name for name in WRITTEN]
    for folder in ("checkpoints", "samples"):
        inside = run_dir / folder
        if inside.is_dir() and not inside.is_symlink():
            names += sorted(inside.iterdir())
    for path in names:
        if path.is_symlink():
            raise ConfigError(
                f"run.dir: {path} is a symbolic link (to {os.readlink(path)}); a run writes, rotates and "
                f"deletes only inside its run directory and never through a link. Replace the link by a "
                f"real file or directory, or set run.dir to a directory of its own")


def lock(run_dir: str | Path) -> None:
    """Lock run_dir for this process (see the module docstring); ConfigError when another
    trainer holds it. run_dir must exist."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    path = run_dir / LOCK_NAME
    if key in _HELD:
        raise ConfigError(f"run.dir: {run_dir} is in use by another trainer in this process; one run "
                          f"directory takes one trainer at a time")
    try:  # O_NOFOLLOW: a link planted after check_links is not followed either
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:  # a directory or a link by that name, or no permission
        raise ConfigError(f"run.dir: cannot open the lock file {path} ({err.strerror or err}); remove it if "
                          f"it is not a file") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)  # closing our own descriptor never drops another process's lock
        if err.errno in (11, 13):  # EAGAIN / EACCES: held by another process
            raise ConfigError(f"run.dir: {run_dir} is in use by another trainer ({_holder(path)}); one run "
                              f"directory takes one trainer at a time: wait for it to end, stop it, or set "
                              f"run.dir to another directory") from None
        print(f"[arena] warning: cannot lock {path} ({err.strerror or err}); a second trainer on this "
              f"run.dir would not be detected", file=sys.stderr)
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
             .encode())
    _HELD[key] = fd


def unlock(run_dir: str | Path) -> None:
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # releases the lock; the file stays (the next holder rewrites it)


def _holder(path: Path) -> str:
    try:
        with open(path, "rb") as f:  # another process's lock: this descriptor is ours alone
            return f.read(200).decode(errors="replace").strip() or "holder unknown"
    except OSError:
        return "holder unknown"


def resume_source(run_dir: str | Path, resume: str) -> str:
    """-> '' (a fresh start), 'latest' or a checkpoint directory; ConfigError when the
    start would mix two runs in run_dir (see the module docstring)."""
    run_dir = Path(run_dir)
    found = ckpt.checkpoint_dirs(run_dir)
    if resume == "auto":
        return "latest" if found else ""
    if not resume and found:
        raise ConfigError(
            f"run.dir: {run_dir} already holds checkpoints of a run ({found[-1].name} is the newest); to continue "
            f"it, set run.resume=latest; to start a new run, set run.dir to a new directory (or "
            f"remove {run_dir / 'checkpoints'})")
    if branches(run_dir, resume):
        ckpt.resolve_checkpoint(run_dir, resume)  # a path that is no checkpoint is named as such first
        if found:
            raise ConfigError(
                f"run.resume: {resume} is a checkpoint of another run directory, and run.dir {run_dir} holds "
                f"checkpoints of its own ({found[-1].name} is the newest); resuming here would mix the two runs "
                f"(rotation deletes one's checkpoints, metrics.jsonl holds both). To branch off {resume}, set "
                f"run.dir to a new directory; to continue {run_dir}, set run.resume=latest")
    return resume


@contextmanager
def claim(cfg, procs):
    """Check, lock and hold cfg.run.dir for a run; yields the resume source (see
    resume_source). The main process decides; every process gets its answer."""
    run_dir = Path(cfg.run.dir)
    answer: tuple[str, str] = ("", "")  # (error message, resume source)
    locked = False
    if procs.main:
        try:
            check_links(run_dir)
            ckpt.check_writable(run_dir)  # creates run_dir and checkpoints/
            lock(run_dir)
            locked = True
            answer = ("", resume_source(run_dir, cfg.run.resume))
        except Exception as err:  # noqa: BLE001 - every process must hear of it, then it is raised
            if locked:
                unlock(run_dir)
                locked = False
            if not isinstance(err, ConfigError):
                err = ConfigError(f"run.dir: {run_dir}: {type(err).__name__}: {err}")
            answer = (str(err), "")
    if procs.world > 1 and dist.is_initialized():
        shared = [answer]
        dist.broadcast_object_list(shared, src=0)
        answer = shared[0]
    error, resume = answer
    try:
        if error:
            raise ConfigError(error)
        if not procs.main:  # each process writes its RNG file there (another node may see another mount)
            ckpt.check_writable(run_dir)
        yield resume
    finally:
        if locked:
            unlock(run_dir)


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Append one row to run_dir/metrics.jsonl (a command's measurement of a finished run),
    never through a symbolic link: ConfigError naming the file and why it cannot be written."""
    path = Path(run_dir) / "metrics.jsonl"
    try:  # O_NOFOLLOW: a metrics.jsonl that is a link is refused, nothing is written outside the run
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:
        why = "it is a symbolic link" if os.path.islink(path) else (err.strerror or str(err))
        raise ConfigError(f"--run: cannot append to {path}: {why}") from None


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl that are JSON objects; other lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    return [row for _, row in _rows(path.read_bytes()) if row is not None]


def _rows(data: bytes):
    """(line, parsed object or None) for each line of a metrics file, line endings kept."""
    for line in data.splitlines(keepends=True):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser
            row = None
        yield line, row if isinstance(row, dict) else None


def drop_metrics_after(path: str | Path, start: int) -> int:
    """Rows of steps after `start` came from steps a resumed run does again (a run killed
    after its last checkpoint, or before its first one): drop them so that no step
    appears twice, and drop a last line without its newline (a write cut short by a
    kill). Other lines are kept byte for byte. -> how many lines were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = list(_rows(path.read_bytes()))
    keep = [line for line, row in lines if line.endswith(b"\n") and not _after(row, start)]
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)  # a link left there is removed, not written through
        tmp.write_bytes(b"".join(keep))
        os.replace(tmp, path)
    return len(lines) - len(keep)


def branches(run_dir: str | Path, resume: str) -> bool:
    """Whether `resume` is a checkpoint of another run directory (a branch starts run_dir)."""
    if resume in ("", "latest", "auto"):
        return False
    return Path(resume).resolve().parent != (Path(run_dir) / "checkpoints").resolve()


def _after(row: dict | None, start: int) -> bool:
    step = row.get("step") if row is not None else None
    return isinstance(step, int) and not isinstance(step, bool) and step > start
