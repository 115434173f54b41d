"""The files torch-fidelity unpickles, checked before it reads them.

torch-fidelity 0.4 loads its Inception weights and its cache files with
torch.load(weights_only=False), so a crafted file would run code. It is never handed a
file another process can change: at each call (`calculate_metrics`) the Inception file
and the cache files of the key are copied into a private temporary folder (mode 0700,
files 0600), and the copies are checked before torch-fidelity reads them:

- Inception: the sha256 of the bytes copied begins with the prefix in the file's name
  (torch hub's convention), and a weights-only load gives only tensors (an 8-digit prefix
  can be matched by brute force; the weights-only load is what guarantees that loading
  runs nothing: torch-fidelity's full unpickler then performs the same safe steps);
- cache files: a weights-only load that allows numpy arrays of number dtypes.

Statistics torch-fidelity writes into the private cache are copied back to the shared one.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

import torch
import torch_fidelity
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from arena.registry import ConfigError

from .features import file_digest

INCEPTION_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
INCEPTION_ENV = "DIM_INCEPTION_WEIGHTS"
# torch hub's naming convention: the hex digits before the extension begin the file's sha256.
INCEPTION_SHA256 = re.search(r"-([0-9a-f]{8,})\.", INCEPTION_FILE).group(1)
FETCH_TIMEOUT_S = 60
_VERIFIED: set[tuple] = set()


def inception_weights_path(explicit: str | None = None) -> Path:
    """The verified Inception weights: `explicit`, else $DIM_INCEPTION_WEIGHTS, else torch hub's
    cache, fetched there from torch-fidelity's release URL on first use (as torch-fidelity does).

    Raises ConfigError naming the file and where to put it when it is missing and cannot be
    fetched (no network), or when it is not the known file (see verify_inception): a run must
    never fall back to untrained weights, nor hand torch-fidelity a file that could run code.
    """
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    how = (f"torch-fidelity's Inception weights {INCEPTION_FILE} (from {URL_INCEPTION_V3}) are needed for "
           f"features 'inception'. Without network they cannot be fetched: copy the file to {hub_file} "
           f"(torch hub's cache; $TORCH_HOME/hub/checkpoints), or point --inception-weights / "
           f"eval.inception_weights / ${INCEPTION_ENV} at a copy")
    for source, value in (("--inception-weights / eval.inception_weights", explicit),
                          (f"${INCEPTION_ENV}", os.environ.get(INCEPTION_ENV))):
        if value:
            path = Path(os.path.expanduser(value))
            if not path.is_file():
                raise ConfigError(f"{source}: {path} not found. {how}")
            return verify_inception(path, how)
    if not hub_file.is_file():
        try:
            fetch_inception(hub_file)
        except Exception as e:  # no network, a proxy's error page, a full disk: all end the same way
            raise ConfigError(f"{INCEPTION_FILE} not found in {hub_file.parent}, and fetching it failed "
                              f"({type(e).__name__}: {e}). {how}") from None
    return verify_inception(hub_file, how)


def fetch_inception(dest: Path) -> None:
    """Download torch-fidelity's Inception weights to `dest`: a temp file in the same folder,
    renamed only when its sha256 begins with INCEPTION_SHA256 (no half or foreign file stays)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}-")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(URL_INCEPTION_V3, timeout=FETCH_TIMEOUT_S) as r:
            for block in iter(lambda: r.read(1 << 20), b""):
                h.update(block)
                f.write(block)
        if not h.hexdigest().startswith(INCEPTION_SHA256):
            raise ValueError(f"the downloaded file's sha256 begins {h.hexdigest()[:8]}, not {INCEPTION_SHA256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def verify_inception(path: Path, how: str = "") -> Path:
    """`path` if it is torch-fidelity's Inception file, else ConfigError: the early check of
    resolve_features (memoized by path, size and mtime). What torch-fidelity loads is a
    private copy verified again at the call, so a file changed after this check is never
    handed to it."""
    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return path
    _check_inception(path, file_digest(path), path, how)
    _VERIFIED.add(key)
    return path


def _check_inception(path: Path, digest: str, shown: Path, how: str = "") -> None:
    """The two checks on `path`'s bytes (whose sha256 is `digest`); messages name `shown`,
    the user's file."""
    if not digest.startswith(INCEPTION_SHA256):
        msg = f"{shown} is not {INCEPTION_FILE}: its sha256 begins {digest[:8]}, the known file's {INCEPTION_SHA256}"
        raise ConfigError(f"{msg}. {how}" if how else msg)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{shown}: refusing to hand this file to torch-fidelity (which loads it with "
                          f"weights_only=False and would run code in it): it is not plain tensors "
                          f"({first_line(e)})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{shown}: not a state dict of tensors, so not {INCEPTION_FILE}")


def first_line(e: Exception) -> str:
    """The reason in an exception's message: torch's weights-only errors put it
    ("Unsupported global: ...") after a long preamble."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    reason = next((ln for ln in lines if "Unsupported" in ln or "error:" in ln), lines[0] if lines else "")
    return f"{type(e).__name__}: {reason[:300]}"


def _private_copy(src: Path, folder: Path) -> tuple[Path, str]:
    """src's bytes, read once, into a new file in `folder` that only this user can open
    (mkstemp: mode 0600); -> (the copy, sha256 of the bytes copied)."""
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=src.suffix)
    h = hashlib.sha256()
    with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            out.write(block)
    return Path(tmp), h.hexdigest()


def _array_globals() -> list:
    """What torch-fidelity's cache files hold beyond tensors: numpy arrays of plain number
    dtypes (the FID statistics mu, sigma). Object arrays stay refused."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    rebuild = core.multiarray._reconstruct
    return [rebuild, (rebuild, "numpy.core.multiarray._reconstruct"),  # numpy 2 and numpy 1 files
            np.ndarray, np.dtype, *{type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"}]


def _check_cache_file(path: Path, shown: Path) -> None:
    try:
        with torch.serialization.safe_globals(_array_globals()):
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"metric cache file {shown} is not plain tensors or arrays ({first_line(e)}); "
                          f"torch-fidelity would load it with weights_only=False, which can run code. "
                          f"Delete it: the reference statistics are recomputed on the next run") from None


def private_cache(cache_root: str | os.PathLike, cache_key: str, folder: Path) -> set[str]:
    """Copy every file torch-fidelity would read for `cache_key` into the private `folder`,
    each copy checked to load weights-only (else ConfigError naming the original); -> the
    names copied."""
    copied = set()
    for path in sorted(Path(cache_root).glob(f"{glob.escape(cache_key)}-*.pt")):
        copy, _ = _private_copy(path, folder)
        _check_cache_file(copy, path)
        os.replace(copy, folder / path.name)
        copied.add(path.name)
    return copied


def _publish_new_cache_files(folder: Path, cache_root: str | os.PathLike, copied: set[str]) -> None:
    """Files torch-fidelity wrote into the private cache go to the shared one (each renamed
    into place whole)."""
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.pt"):
        if path.name not in copied:
            fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{path.name}-")
            with os.fdopen(fd, "wb") as out, open(path, "rb") as f:
                shutil.copyfileobj(f, out)
            os.replace(tmp, root / path.name)


def calculate_metrics(kwargs: dict, *, inception: bool, cache_key: str | None, cache_root: str) -> dict:
    """torch_fidelity.calculate_metrics(**kwargs), reading only private, verified copies:
    of the Inception weights (when `inception`) and of the cache files of `cache_key` (none:
    no cache). The private folder is removed afterwards; new cache files are published."""
    kwargs = dict(kwargs)
    folder = Path(tempfile.mkdtemp(prefix="dim-fidelity-"))  # mode 0700
    try:
        if inception:
            shown = Path(kwargs["feature_extractor_weights_path"])
            copy, digest = _private_copy(shown, folder)
            _check_inception(copy, digest, shown)
            kwargs["feature_extractor_weights_path"] = str(copy)
        copied: set[str] = set()
        if cache_key:
            (folder / "cache").mkdir()
            copied = private_cache(cache_root, cache_key, folder / "cache")
            kwargs.update(cache=True, input2_cache_name=cache_key, cache_root=str(folder / "cache"))
        else:
            kwargs.update(cache=False)
        out = torch_fidelity.calculate_metrics(**kwargs)
        if cache_key:
            _publish_new_cache_files(folder / "cache", cache_root, copied)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)
