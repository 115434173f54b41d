"""The key list of an lmdb database, cached in a file that cannot run code, where only the user writes.

Indexing LSUN's images needs every key in order; listing 3 million keys takes a while, so
the list is kept between runs. The cache is plain text (a header line with what it was
made from, then one key per line in hex), so reading a planted or damaged file can at
worst give wrong keys, and any file whose header, count or ownership does not check out
is rebuilt. It lives in `$DIM_LSUN_CACHE` or `~/.cache/dim_toolkit/lsun`: a folder of
mode 0700 owned by the user. A folder others may write is not used (the keys are then
listed at every start, with a warning). Nothing is written to the dataset's folder, the
working directory or /tmp, and torchvision's `_cache_*` pickles are never read.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

CACHE_ENV = "DIM_LSUN_CACHE"
_FORMAT = "dim_toolkit lmdb keys v1"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(os.path.expanduser("~")) / ".cache" / "dim_toolkit" / "lsun")


def database_keys(env, path: Path) -> list[bytes]:
    """The keys of the open lmdb `env` (the database folder `path`) in lmdb's order."""
    data = os.stat(path / "data.mdb")
    with env.begin(write=False) as txn:
        entries = txn.stat()["entries"]
    # what the list was made from: a database changed in place has another size or mtime
    header = f"{_FORMAT} entries={entries} size={data.st_size} mtime_ns={data.st_mtime_ns}"
    folder = _private_folder()
    cache = folder / f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:16]}.keys" if folder else None
    keys = _read(cache, header, entries) if cache else None
    if keys is None:
        with env.begin(write=False) as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
        if cache:
            _write(cache, header, keys)
    return keys


def _private_folder() -> Path | None:
    """The cache folder, created 0700; None (with a warning) when others could write to it."""
    folder = cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as e:
        warnings.warn(f"LSUN key cache {folder} is not usable ({e.strerror or e}); keys are listed at every start")
        return None
    if not _only_mine(info):
        warnings.warn(f"LSUN key cache {folder} is not used: it must be a folder owned by you that others cannot "
                      f"write (chmod 700 {folder}); keys are listed at every start")
        return None
    return folder


def _only_mine(info: os.stat_result) -> bool:
    # owned by this user, not writable by group or others (no uid on Windows: mode only)
    return (not hasattr(os, "getuid") or info.st_uid == os.getuid()) and not info.st_mode & 0o022


def _read(cache: Path, header: str, entries: int) -> list[bytes] | None:
    """The cached keys, or None when the file is missing, foreign, stale or damaged."""
    try:
        if not _only_mine(cache.stat()):
            return None
        lines = cache.read_text(encoding="ascii").splitlines()
        if len(lines) != entries + 1 or lines[0] != header:
            return None
        return [bytes.fromhex(line) for line in lines[1:]]
    except (OSError, ValueError):  # ValueError: not ascii, or not hex
        return None


def _write(cache: Path, header: str, keys: list[bytes]) -> None:
    """Write the list beside its final name, then rename: a reader never sees half a file."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".tmp-", suffix=".keys")  # mode 0600
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(header + "\n")
            f.writelines(k.hex() + "\n" for k in keys)
        os.replace(tmp, cache)
    except OSError as e:  # a full disk costs the cache, not the run
        warnings.warn(f"LSUN key cache {cache} not written ({e.strerror or e})")
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
