"""IS / FID / KID / precision-recall of a generator through torch-fidelity 0.4.

- `resolve_features` picks the feature space (Inception from a local weights file,
  fetched on first use where there is a network, or a domain classifier from eval/weights)
  and fails at once when a file is missing or cannot be fetched.
- `compute_metrics` feeds uint8 images to torch-fidelity; the real side's features
  are cached under a key that names the dataset split and the feature extractor. The
  files torch-fidelity unpickles are checked first (eval.safe_fidelity).
- `evaluate_generator` scores a generator's n seeded samples (eval.samples: the same n
  images for any number of processes and batch size), for the eval.fid_is CLI and the
  trainer's metric hook. One process renders its samples batch by batch while
  torch-fidelity reads them; with several, each renders its shard, the shards are
  gathered, and the main process computes (torch-fidelity is single-process).
  torch-fidelity keeps every sample's features in memory, so the number of samples is
  checked against this machine's memory (`check_sample_memory`) before any is drawn.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch_fidelity
from torch.utils.data import Dataset

from arena.distributed import Processes
from arena.registry import ConfigError, suggest

from . import safe_fidelity
from .features import EXTRACTOR_NAME, file_digest, load_classifier, shipped_extractors
from .samples import RenderedSamples, UInt8Images, assemble, generate_samples, shard_indices

METRICS = ("fid", "isc", "kid", "prc")
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


def reference_images(dataset: Dataset, limit: int = REFERENCE_LIMIT, seed: int = 0) -> UInt8Images:
    """All of `dataset`, or a fixed seeded subset of `limit` images when it is larger."""
    if limit and len(dataset) > limit:
        g = torch.Generator().manual_seed(seed)
        return UInt8Images(dataset, torch.randperm(len(dataset), generator=g)[:limit].sort().values)
    return UInt8Images(dataset)


# ---------------------------------------------------------------------------- features


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
                "feature_extractor_weights_path": str(safe_fidelity.inception_weights_path(inception_weights))}
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
    fake = fake if isinstance(fake, (UInt8Images, RenderedSamples)) else UInt8Images(fake)
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
    out = safe_fidelity.calculate_metrics(kwargs, inception=inception, cache_key=cache_key,
                                          cache_root=cache_root or default_cache_root())
    return {ours: float(out[theirs]) for theirs, ours in _KEYS.items() if theirs in out}


# ---------------------------------------------------------------------------- sampling


def feature_width(features: dict) -> int:
    """Numbers torch-fidelity keeps per sample in this feature space (all layers the
    metrics read): Inception's 2048-d pool and 1008 logits, or a classifier's features
    and logits."""
    if features["feature_extractor"] == "inception-v3-compat":
        return 2048 + 1008
    _, meta = load_classifier(features["feature_extractor_weights_path"])
    return int(meta["feature_dim"]) + int(meta["num_classes"])


def machine_memory() -> int | None:
    """Bytes of physical memory (the same on every process of a machine), None if unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_sample_memory(n: int, features: dict, image_bytes: int = 0, key: str = "number of samples") -> None:
    """ConfigError when n samples cannot fit: torch-fidelity keeps every sample's features,
    in float32 twice (its list of batches and their concatenation) and float64 once (the FID
    statistics), 16 bytes a number; gathered images (`image_bytes` a sample, held three
    times by the gather) come on top."""
    total = machine_memory()
    need = n * (16 * feature_width(features) + 3 * image_bytes)
    if total is not None and need > total:
        raise ConfigError(f"{key}: {n} samples need about {need / 2**30:.1f} GiB of memory (torch-fidelity keeps "
                          f"every sample's features), more than this machine's {total / 2**30:.1f} GiB; "
                          f"use fewer (the standard is 50000)")


# ---------------------------------------------------------------------------- one call


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


def _device_of(objective) -> torch.device:
    nets = getattr(objective, "nets", None)
    if nets is not None:
        for p in nets.parameters():
            return p.device
    return torch.device("cpu")


def evaluate_generator(objective, cfg, *, num_samples: int | None = None, metrics: Sequence[str] | None = None,
                       features: str | None = None, inception_weights: str | None = None, seed: int = 0,
                       batch_size: int = 100, ema: bool = True, procs: Processes | None = None,
                       reference: Dataset | None = None, reference_limit: int = REFERENCE_LIMIT,
                       cache_root: str | None = None, verbose: bool = False,
                       sample_key: str = "eval.num_samples") -> dict | None:
    """Metrics of `objective`'s generator against the train split of cfg.data.

    Defaults come from cfg.eval (num_samples, metrics, features, inception_weights).
    `sample_key` names the number of samples in messages.
    `procs`: the process layout (arena.distributed.processes(); default one process).
    With several processes every one calls this and renders its shard; the shards are
    gathered and the main process computes. -> the metrics on the main process, None elsewhere.
    """
    if not getattr(objective, "generates", False):
        raise ConfigError(f"objective '{cfg.objective.name}' does not generate images; IS/FID need a generator")
    n = int(num_samples or cfg.eval.num_samples)
    world = procs.world if procs is not None else 1
    metrics = check_metrics(metrics or cfg.eval.metrics)
    # Before any sample is drawn: a missing weights file or too many samples fail in seconds.
    feats = resolve_features(features or cfg.eval.features, cfg.data, inception_weights or cfg.eval.inception_weights)
    if n < 1:
        raise ConfigError(f"{sample_key}: must be >= 1, got {n}")
    check_sample_memory(n, feats, 3 * cfg.data.resolution ** 2 if world > 1 else 0, sample_key)
    main = procs is None or procs.main
    cache_key = None
    if main and any(m in metrics for m in ("fid", "kid", "prc")):
        if reference is None:
            reference, cache_key = train_reference(cfg.data, feats, reference_limit)
        elif not isinstance(reference, UInt8Images):
            reference = UInt8Images(reference)
    device = _device_of(objective)

    def generate(z: torch.Tensor) -> torch.Tensor:
        return objective.generate(z.to(device), ema=ema)

    if world == 1:
        images = RenderedSamples(generate, objective.latent, n, seed=seed, batch_size=batch_size)
    else:
        local = generate_samples(generate, objective.latent, n, seed=seed, batch_size=batch_size,
                                 rank=procs.rank, world_size=world)
        gathered = procs.gather(local.to(procs.device))  # NCCL gathers CUDA tensors only
        if not main:
            return None
        sizes = [len(shard_indices(n, r, world)) for r in range(world)]
        images = assemble([s.cpu() for s in gathered.split(sizes)], n, world)
    return compute_metrics(images, reference, metrics=metrics, features=feats, cache_key=cache_key,
                           batch_size=batch_size, device=device, cache_root=cache_root, verbose=verbose)
