"""IS / FID / KID / precision-recall of a generator through torch-fidelity 0.4.0.

Three pieces, usable alone:

- `resolve_features` picks the feature space (Inception from a local weights file,
  fetched on first use where there is a network, or a domain classifier from eval/weights)
  and fails at once when a file is missing or cannot be fetched.
- `generate_samples` + `assemble` draw exactly n samples, the same n for any number
  of processes: every process draws all n latents from one seeded generator and
  renders only indices rank::world_size; the shards are interleaved back in order.
- `compute_metrics` feeds uint8 images to torch-fidelity; the real side's features
  are cached under a key that names the dataset split and the feature extractor.

torch-fidelity 0.4 loads the Inception weights and its cache files with
torch.load(weights_only=False), so a crafted file would run code. It is never handed a
file another process can change: at each call the Inception file and the cache files of
the key are copied into a private temporary folder (mode 0700, files 0600), and the copies
are checked (Inception: the sha256 of the bytes copied begins with the prefix in its name,
and a weights-only load gives only tensors; cache files: a weights-only load) before
torch-fidelity reads them; statistics it writes are copied back to the shared cache.

`evaluate_generator` ties them together for the eval.fid_is CLI and the trainer's
metric hook. torch-fidelity is single-process: with several processes the samples
are gathered and only rank 0 computes the metrics.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

import torch_fidelity
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from arena.data import to_uint8
from arena.registry import ConfigError, suggest

from .features import EXTRACTOR_NAME, file_digest, load_classifier, shipped_extractors

METRICS = ("fid", "isc", "kid", "prc")
INCEPTION_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
INCEPTION_ENV = "DIM_INCEPTION_WEIGHTS"
CACHE_ENV = "DIM_FIDELITY_CACHE"
REFERENCE_LIMIT = 50000  # real images in the reference statistics (a fixed seeded subset beyond this)

# torch-fidelity's result keys -> ours
_KEYS = {
    torch_fidelity.KEY_METRIC_FID: "fid",
    torch_fidelity.KEY_METRIC_ISC_MEAN: "isc_mean",
    torch_fidelity.KEY_METRIC_ISC_STD: "isc_std",
    torch_fidelity.KEY_METRIC_KID_MEAN: "kid_mean",
    torch_fidelity.KEY_METRIC_KID_STD: "kid_std",
    torch_fidelity.KEY_METRIC_PRECISION: "precision",
    torch_fidelity.KEY_METRIC_RECALL: "recall",
}


# ---------------------------------------------------------------------------- images


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """uint8 [C, H, W] -> [3, H, W]: gray repeated, RGB kept."""
    if x.shape[0] == 1:
        return x.expand(3, -1, -1).contiguous()
    if x.shape[0] != 3:
        raise ValueError(f"expected 1 or 3 channels, got image of shape {tuple(x.shape)}")
    return x


class UInt8Images(Dataset):
    """Images as torch-fidelity wants them: uint8 RGB [3, H, W], no labels.

    `source`: a float [-1, 1] or uint8 tensor [N, C, H, W], or a dataset whose items
    are (x float [C, H, W] in [-1, 1], label) as arena.data's. `indices` picks a subset.
    """

    def __init__(self, source: torch.Tensor | Dataset, indices: Sequence[int] | torch.Tensor | None = None):
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.long)
        if torch.is_tensor(source):
            if source.dim() != 4:
                raise ValueError(f"expected images [N, C, H, W], got shape {tuple(source.shape)}")
            self.images, self.dataset = to_uint8(source), None
        elif getattr(source, "in_memory", False):
            self.images, self.dataset = source.images, None  # the stored uint8, no float round trip
        else:
            self.images, self.dataset = None, source

    def __len__(self) -> int:
        if self.indices is not None:
            return len(self.indices)
        return len(self.images) if self.images is not None else len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        j = int(self.indices[i]) if self.indices is not None else i
        if self.images is not None:
            return _rgb(self.images[j])
        item = self.dataset[j]
        x = item[0] if isinstance(item, (tuple, list)) else item
        return _rgb(to_uint8(x))


def reference_images(dataset: Dataset, limit: int = REFERENCE_LIMIT, seed: int = 0) -> UInt8Images:
    """All of `dataset`, or a fixed seeded subset of `limit` images when it is larger."""
    if limit and len(dataset) > limit:
        g = torch.Generator().manual_seed(seed)
        return UInt8Images(dataset, torch.randperm(len(dataset), generator=g)[:limit].sort().values)
    return UInt8Images(dataset)


# ---------------------------------------------------------------------------- features


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


# torch hub's naming convention: the hex digits before the extension begin the file's sha256.
INCEPTION_SHA256 = re.search(r"-([0-9a-f]{8,})\.", INCEPTION_FILE).group(1)
FETCH_TIMEOUT_S = 60
_VERIFIED: set[tuple] = set()


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
    private copy verified again at the call (private_inception_copy), so a file changed
    after this check is never handed to it.

    torch-fidelity 0.4 loads the weights with torch.load(weights_only=False), which runs any
    code a crafted pickle holds. Two checks before it may: the sha256 prefix in the file's
    name (the right file), and a weights-only load that succeeds and gives only tensors (an
    8-digit prefix can be matched by brute force; the weights-only load is what guarantees that
    loading runs nothing: torch-fidelity's full unpickler then performs the same safe steps).
    """
    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return path
    _check_inception(path, file_digest(path), path, how)
    _VERIFIED.add(key)
    return path


def _check_inception(path: Path, digest: str, shown: Path, how: str = "") -> None:
    """The two checks of verify_inception on `path`'s bytes (whose sha256 is `digest`);
    messages name `shown`, the user's file."""
    if not digest.startswith(INCEPTION_SHA256):
        msg = f"{shown} is not {INCEPTION_FILE}: its sha256 begins {digest[:8]}, the known file's {INCEPTION_SHA256}"
        raise ConfigError(f"{msg}. {how}" if how else msg)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{shown}: refusing to hand this file to torch-fidelity (which loads it with "
                          f"weights_only=False and would run code in it): it is not plain tensors "
                          f"({_first_line(e)})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{shown}: not a state dict of tensors, so not {INCEPTION_FILE}")


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


@contextmanager
def _private_folder():
    folder = Path(tempfile.mkdtemp(prefix="dim-fidelity-"))  # mode 0700
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # torch's weights-only errors put the reason ("Unsupported global: ...") after a long preamble
    reason = next((ln for ln in lines if "Unsupported" in ln or "error:" in ln), lines[0] if lines else "")
    return f"{type(e).__name__}: {reason[:300]}"


def _domain_for(data_name: str, resolution: int) -> Path | None:
    """The shipped extractor for a dataset: <name>-<resolution>.pt, else the nearest resolution."""
    candidates = []
    for stem, path in shipped_extractors().items():
        name, _, res = stem.rpartition("-")
        if name == data_name and res.isdigit():
            candidates.append((abs(int(res) - resolution), path))
    return min(candidates)[1] if candidates else None


def resolve_features(name_or_path: str, data_cfg=None, inception_weights: str | None = None) -> dict:
    """-> torch-fidelity kwargs (feature_extractor, feature_extractor_weights_path).

    'inception': Inception-v3 (torch-fidelity's port of the TF weights), from a local file.
    'auto': the shipped domain classifier for data_cfg's dataset if there is one, else inception.
    a shipped name ('digits-32'), or a path to a weights file from eval.train_features.
    """
    name = str(name_or_path or "auto")
    if name == "auto":
        path = _domain_for(data_cfg.name, data_cfg.resolution) if data_cfg is not None else None
        return resolve_features(str(path) if path else "inception", data_cfg, inception_weights)
    if name == "inception":
        return {"feature_extractor": "inception-v3-compat",
                "feature_extractor_weights_path": str(inception_weights_path(inception_weights))}
    shipped = shipped_extractors()
    if name in shipped:
        path = shipped[name]
    elif os.path.isfile(os.path.expanduser(name)):
        path = Path(os.path.expanduser(name))
    else:
        choices = ["auto", "inception", *shipped]
        raise ConfigError(f"eval.features: '{name}' is neither a known feature extractor{suggest(name, choices)} "
                          f"nor an existing weights file; valid choices: {', '.join(choices)} or a path")
    load_classifier(path)  # fails now, with the path, rather than inside torch-fidelity
    return {"feature_extractor": EXTRACTOR_NAME, "feature_extractor_weights_path": str(path.resolve())}


def features_id(features: dict) -> str:
    """Identity of a feature extractor: registered name + hash of its weights file."""
    return f"{features['feature_extractor']}-{file_digest(features['feature_extractor_weights_path'])}"


def describe_features(features: dict) -> str:
    """Short human label: 'inception' or the domain weights file's stem."""
    if features["feature_extractor"] == "inception-v3-compat":
        return "inception"
    return Path(features["feature_extractor_weights_path"]).stem


def reference_cache_key(signature: dict, features: dict, limit: int = REFERENCE_LIMIT) -> str:
    """A file-name-safe key naming the real images and the feature space, e.g. 'digits-train-32px-<hash>'."""
    blob = json.dumps({"data": signature, "features": features_id(features), "limit": limit}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return f"{signature.get('name', 'data')}-{signature.get('split', '')}-{signature.get('resolution', '')}px-{digest}"


def default_cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "dim_toolkit", "fidelity")


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
        raise ConfigError(f"metric cache file {shown} is not plain tensors or arrays ({_first_line(e)}); "
                          f"torch-fidelity would load it with weights_only=False, which can run code. "
                          f"Delete it: the reference statistics are recomputed on the next run") from None


def private_cache(cache_root: str | os.PathLike, cache_key: str, folder: Path) -> set[str]:
    """Copy every file torch-fidelity would read for `cache_key` into the private `folder`,
    each copy checked to load weights-only (else ConfigError naming the original); -> the
    names copied. torch-fidelity 0.4 reads its cache with torch.load(weights_only=False): it
    is pointed at `folder`, so a file planted or swapped in the shared cache after the check
    is never what it reads."""
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


# ---------------------------------------------------------------------------- metrics


def check_metrics(metrics: Sequence[str], key: str = "eval.metrics") -> list[str]:
    """The metrics without repeats, in order; ConfigError naming `key` for an unknown or no metric."""
    out = []
    for m in metrics:
        if m not in METRICS:
            raise ConfigError(f"{key}: unknown metric '{m}'{suggest(m, METRICS)}; "
                              f"valid choices: {', '.join(METRICS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise ConfigError(f"{key}: empty; choose from {', '.join(METRICS)}")
    return out


def compute_metrics(fake: torch.Tensor | Dataset, reference: torch.Tensor | Dataset | None, *,
                    metrics: Sequence[str] = ("fid", "isc", "kid"), features: dict | str,
                    cache_key: str | None = None, batch_size: int = 100, device: str | torch.device = "cpu",
                    cache_root: str | None = None, kid_subset_size: int = 1000, kid_subsets: int = 100,
                    isc_splits: int = 10, verbose: bool = False) -> dict:
    """{fid, isc_mean, isc_std, kid_mean, kid_std, precision, recall} for the metrics asked.

    fake, reference: images float [-1, 1] or uint8 [N, C, H, W], an arena.data
    dataset, or a UInt8Images; reference (the real images) is needed for fid/kid/prc.
    With `cache_key`, the reference features and FID statistics are stored in
    `cache_root` (default ~/.cache/dim_toolkit/fidelity or $DIM_FIDELITY_CACHE) and
    read back on the next call with the same key, so the key
    must name everything that determines them (use reference_cache_key).
    All metrics share one feature space; with 'inception', precision/recall use
    Inception's 2048-d pool features, not the VGG16 of Kynkaanniemi et al.
    """
    metrics = check_metrics(metrics)
    if isinstance(features, str):
        features = resolve_features(features)
    inception = features["feature_extractor"] == "inception-v3-compat"
    if inception and not features.get("feature_extractor_weights_path"):
        # none: torch-fidelity would fetch and load one unchecked
        raise ValueError("features: inception-v3-compat needs feature_extractor_weights_path "
                         "(use resolve_features('inception'))")
    fake = fake if isinstance(fake, UInt8Images) else UInt8Images(fake)
    binary = any(m in metrics for m in ("fid", "kid", "prc"))
    if binary and reference is None:
        raise ValueError(f"metrics {metrics} compare with real images: pass `reference`")
    kwargs = dict(
        input1=fake,
        cuda=torch.device(device).type == "cuda",
        batch_size=batch_size,
        # save_cpu_ram=True is the only way to get num_workers=0 from torch-fidelity's
        # DataLoader (else it starts 4 workers, each a copy of in-memory images); it also
        # selects its low-memory precision/recall, which gives the same numbers.
        save_cpu_ram=True,
        verbose=verbose,
        isc_splits=max(1, min(isc_splits, len(fake))),
        kid_subsets=kid_subsets,
        **features,
        **{m: m in metrics for m in METRICS},
    )
    if binary:
        reference = reference if isinstance(reference, UInt8Images) else UInt8Images(reference)
        # KID averages MMD over subsets; a subset cannot be bigger than either side.
        kwargs.update(input2=reference, kid_subset_size=min(kid_subset_size, len(fake), len(reference)))
    cache_key = cache_key if binary else None
    # torch-fidelity unpickles the weights and cache files it is given: it gets private copies
    # of exactly the bytes verified here, right before the call
    with _private_folder() as folder:
        if inception:
            shown = Path(features["feature_extractor_weights_path"])
            copy, digest = _private_copy(shown, folder)
            _check_inception(copy, digest, shown)
            kwargs["feature_extractor_weights_path"] = str(copy)
        if cache_key:
            cache_root = cache_root or default_cache_root()
            (folder / "cache").mkdir()
            copied = private_cache(cache_root, cache_key, folder / "cache")
            kwargs.update(cache=True, input2_cache_name=cache_key, cache_root=str(folder / "cache"))
        else:
            kwargs.update(cache=False)
        out = torch_fidelity.calculate_metrics(**kwargs)
        if cache_key:
            _publish_new_cache_files(folder / "cache", cache_root, copied)
    return {ours: float(out[theirs]) for theirs, ours in _KEYS.items() if theirs in out}


# ---------------------------------------------------------------------------- sampling


def shard_indices(n: int, rank: int = 0, world_size: int = 1) -> range:
    """The sample indices rendered by `rank`: rank, rank + world_size, ..."""
    return range(rank, n, world_size)


@torch.no_grad()
def generate_samples(generate: Callable[[torch.Tensor], torch.Tensor],
                     latent: Callable[[int, torch.Generator], torch.Tensor], n: int, *, seed: int,
                     batch_size: int = 100, rank: int = 0, world_size: int = 1, pad: bool = False) -> torch.Tensor:
    """This rank's shard of n samples as uint8 [len(shard), C, H, W] on the CPU.

    Every rank draws all n latents from torch.Generator().manual_seed(seed) (cheap) and
    renders indices rank::world_size, so assemble(shards) is the same n images for any
    world_size and batch_size. pad=True appends zero images up to ceil(n / world_size),
    giving every rank the same shape for an all-gather; assemble drops them.
    """
    if n < 1:
        raise ConfigError(f"number of samples must be >= 1, got {n}")
    z = latent(n, torch.Generator().manual_seed(seed))
    idx = torch.tensor(shard_indices(n, rank, world_size), dtype=torch.long)
    parts = [to_uint8(generate(z[idx[i:i + batch_size]])).cpu() for i in range(0, len(idx), batch_size)]
    if not parts:  # more ranks than samples: render one to learn the shape, keep none
        parts = [to_uint8(generate(z[:1])).cpu()[:0]]
    local = torch.cat(parts)
    if pad:
        full = math.ceil(n / world_size)
        local = torch.cat([local, local.new_zeros((full - len(local), *local.shape[1:]))])
    return local


def assemble(shards: Sequence[torch.Tensor], n: int, world_size: int) -> torch.Tensor:
    """Interleave per-rank shards (rank order, possibly padded at the end) back into index order."""
    if len(shards) != world_size:
        raise ValueError(f"expected {world_size} shards, got {len(shards)}")
    out = None
    for rank, shard in enumerate(shards):
        k = len(shard_indices(n, rank, world_size))
        if len(shard) < k:
            raise ValueError(f"shard {rank} has {len(shard)} samples, expected {k}")
        if out is None:
            out = shard.new_empty((n, *shard.shape[1:]))
        out[rank::world_size] = shard[:k].to(out.device)
    return out


# ---------------------------------------------------------------------------- one call


def _device_of(objective) -> torch.device:
    nets = getattr(objective, "nets", None)
    if nets is not None:
        for p in nets.parameters():
            return p.device
    return torch.device("cpu")


def train_reference(data_cfg, features: dict, limit: int = REFERENCE_LIMIT) -> tuple[UInt8Images, str]:
    """The real side of the comparison: the stored train images (no augmentation), at most
    `limit` of them, and the cache key of their statistics in `features`."""
    from arena.data import build_dataset, dataset_signature

    data_cfg = dataclasses.replace(data_cfg, augment=False)
    reference = reference_images(build_dataset(data_cfg, "train"), limit)
    return reference, reference_cache_key(dataset_signature(data_cfg, "train"), features, limit)


def evaluate_real(cfg, *, metrics: Sequence[str] | None = None, features: str | None = None,
                  inception_weights: str | None = None, batch_size: int = 100, device: str | torch.device = "cpu",
                  reference_limit: int = REFERENCE_LIMIT, cache_root: str | None = None,
                  verbose: bool = False) -> dict:
    """The "real data" row of a generation table: the held-out (test) split of cfg.data
    scored like a generator's samples, against the same train reference."""
    from arena.data import build_dataset

    metrics = check_metrics(metrics or cfg.eval.metrics)
    feats = resolve_features(features or cfg.eval.features, cfg.data, inception_weights or cfg.eval.inception_weights)
    reference, cache_key = train_reference(cfg.data, feats, reference_limit)
    held_out = UInt8Images(build_dataset(dataclasses.replace(cfg.data, augment=False), "test"))
    return compute_metrics(held_out, reference, metrics=metrics, features=feats, cache_key=cache_key,
                           batch_size=batch_size, device=device, cache_root=cache_root, verbose=verbose)


def evaluate_generator(objective, cfg, *, num_samples: int | None = None, metrics: Sequence[str] | None = None,
                       features: str | None = None, inception_weights: str | None = None, seed: int = 0,
                       batch_size: int = 100, ema: bool = True, rank: int = 0, world_size: int = 1,
                       gather: Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]] | None = None,
                       reference: Dataset | None = None, reference_limit: int = REFERENCE_LIMIT,
                       cache_root: str | None = None, verbose: bool = False) -> dict | None:
    """Metrics of `objective`'s generator against the train split of cfg.data.

    Defaults come from cfg.eval (num_samples, metrics, features, inception_weights).
    With world_size > 1, every rank calls this; `gather(local)` must return, on rank 0,
    the padded shards of all ranks either as a list in rank order or concatenated
    (what accelerate's `gather` returns). Returns the metrics on rank 0, None elsewhere.
    """
    if not getattr(objective, "generates", False):
        raise ConfigError(f"objective '{cfg.objective.name}' does not generate images; IS/FID need a generator")
    n = int(num_samples or cfg.eval.num_samples)
    metrics = check_metrics(metrics or cfg.eval.metrics)
    # Before any sample is drawn: a missing weights file fails in seconds, not after 50k samples.
    feats = resolve_features(features or cfg.eval.features, cfg.data, inception_weights or cfg.eval.inception_weights)
    main = rank == 0
    cache_key = None
    if main and any(m in metrics for m in ("fid", "kid", "prc")):
        if reference is None:
            reference, cache_key = train_reference(cfg.data, feats, reference_limit)
        elif not isinstance(reference, UInt8Images):
            reference = UInt8Images(reference)
    device = _device_of(objective)

    def generate(z: torch.Tensor) -> torch.Tensor:
        return objective.generate(z.to(device), ema=ema)

    local = generate_samples(generate, objective.latent, n, seed=seed, batch_size=batch_size, rank=rank,
                             world_size=world_size, pad=world_size > 1)
    if world_size > 1:
        if gather is None:
            raise ValueError("world_size > 1 needs a gather callable")
        gathered = gather(local.to(device))  # NCCL gathers CUDA tensors only
        if not main:
            return None
        shards = list(gathered.chunk(world_size)) if torch.is_tensor(gathered) else list(gathered)
        images = assemble([s.cpu() for s in shards], n, world_size)
    else:
        images = local
    return compute_metrics(images, reference, metrics=metrics, features=feats, cache_key=cache_key,
                           batch_size=batch_size, device=device, cache_root=cache_root, verbose=verbose)
