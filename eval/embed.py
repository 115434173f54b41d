"""Features of a trained encoder for every image of a dataset, written as one .npz.

    python -m eval.embed --run runs/dim_l_cifar10 --data imagefolder data.root=~/photos --layer y --out feats.npz
    accelerate launch -m eval.embed --run runs/dim_l_cifar10 --split test --layer y,conv --out feats.npz

The data is any dataset of the registry (`--data NAME` and `data.KEY=VALUE` overrides
over the run's own data section, whose resolution the encoder needs); `imagefolder`
reads root/train/<class>/* and root/test/<class>/* (labelled), or, where root has no
train/ folder, every image below root (sorted paths, no labels, --split ignored). The file holds, row i for image i
in the dataset's order: `paths` (the file, or NAME:SPLIT:INDEX for datasets held in
memory), `labels` where the data has labels, and one float32 array per layer
(`y`, `fc`, `conv`: the probe points of dim_probes). With N processes each process
encodes one contiguous shard; the shards are gathered in rank order, so the file has
exactly the dataset's rows in order whatever N is, and the main process writes it.

From Python (returns the arrays; every process gets all rows):

    from eval.embed import embed
    feats = embed("runs/dim_l_digits", ["data.name=imagefolder", "data.root=photos"], layers=("y",))
    feats["y"].shape, feats["paths"][:3]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from arena.config import build_dataclass, merge, parse_overrides
from arena.data import IMAGE_EXTENSIONS, DataConfig, FileDataset, build_dataset
from arena.data.registry import root_of
from arena.distributed import processes, shutdown
from arena.images import atomic_file
from arena.registry import ConfigError, cli_error

from .dim_probes import LAYERS, extract, image_batches, load_encoder_run


def data_config(run_data: DataConfig, overrides: list[str]) -> DataConfig:
    """The run's data section with `data.KEY=VALUE` overrides applied (typed and checked
    as the training config's are)."""
    for item in overrides:
        if not item.startswith("data."):
            raise ConfigError(f"override '{item}': only data.KEY=VALUE overrides are read here")
    raw = merge(dataclasses.asdict(run_data), parse_overrides(overrides).get("data", {}))
    return build_dataclass(DataConfig, raw, "data")


def flat_folder(data: DataConfig):
    """An image folder without train/ and test/: every image below data.root (sorted paths,
    subfolders included), unlabeled, decoded as the imagefolder dataset decodes."""
    root = root_of(data)
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ConfigError(f"data.root: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return FileDataset("imagefolder", "all", files, torch.full((len(files),), -1), resolution=data.resolution,
                       num_classes=0, augment=False, skip_bad_files=data.skip_bad_files)


def dataset(data: DataConfig, split: str):
    """The registry's dataset, or for an image folder with no train/ subfolder all its images."""
    if data.name == "imagefolder" and not (root_of(data) / "train").is_dir():
        return flat_folder(data)
    return build_dataset(data, split)


def item_names(ds, split: str) -> list[str]:
    """What to call each image: its file, else NAME:SPLIT:INDEX."""
    if hasattr(ds, "files"):
        return [str(f) for f in ds.files]
    return [f"{ds.name}:{split}:{i}" for i in range(len(ds))]


def shard(n: int, rank: int, world: int) -> torch.Tensor:
    """Rank r's contiguous indices [r n / W, (r+1) n / W): the shards in rank order are 0..n-1."""
    return torch.arange(rank * n // world, (rank + 1) * n // world)


def embed(run: str | Path, overrides: list[str] = (), split: str = "train", layers=("y",), batch_size: int = 256,
          checkpoint: str = "latest", ema: bool = False, progress: bool = False) -> dict[str, np.ndarray]:
    """{'paths', 'labels' (labelled data), layer: float32 [N, D] for each of `layers`} of every
    image of the run's data (with `overrides`) in the dataset's order, on every process."""
    bad = [k for k in layers if k not in LAYERS]
    if bad or not layers:
        raise ConfigError(f"--layer: unknown layer(s) {', '.join(bad) or '(none)'}; valid choices: {', '.join(LAYERS)}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    procs = processes()
    cfg, objective, _ = load_encoder_run(run, checkpoint, procs.device)
    data = dataclasses.replace(data_config(cfg.data, list(overrides)), augment=False)
    ds = dataset(data, split)
    info = objective.info
    if (ds.channels, ds.resolution) != (info.channels, info.resolution):
        fixes = [f"set data.resolution={info.resolution}"] if ds.resolution != info.resolution else []
        if ds.channels != info.channels:
            fixes.append("channels come from the data and cannot be set"
                         + (": image folders are read as RGB" if data.name == "imagefolder" else ""))
        raise ConfigError(f"data: {ds.describe()}, but the encoder of {run} reads {info.channels}x{info.resolution}"
                          f"x{info.resolution} images ({'; '.join(fixes)})")
    if len(ds) < procs.world:  # every process needs a row to gather
        raise ConfigError(f"data: {ds.describe()}: fewer images than the {procs.world} processes; use fewer")
    idx = shard(len(ds), procs.rank, procs.world)
    batches = image_batches(ds, idx, batch_size, data_cfg=data)
    bar = tqdm(batches, desc=f"embed {ds.name} {split}", unit="batch", disable=not (progress and procs.main),
               file=sys.stderr)
    feats, _, _ = extract(objective, bar, layers, ema=ema)
    out = {"paths": np.array(item_names(ds, split))}
    if ds.num_classes > 0:
        out["labels"] = ds.labels.numpy()
    for k in layers:  # every rank's rows, in rank order: the dataset's order
        out[k] = procs.gather(feats[k].to(procs.device)).cpu().numpy().astype(np.float32)
    return out


def write_npz(arrays: dict[str, np.ndarray], path: str | Path) -> Path:
    """np.savez to `path` atomically: an existing file is never left half overwritten."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.embed", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run directory of an encoder (dim, supervised, vae, aae, bigan, nat)")
    p.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint directory")
    p.add_argument("--data", default=None, help="dataset name (default: the run's); same as data.name=NAME")
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE", help="e.g. data.root=DIR")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--layer", default="y", help=f"comma-separated layers from {', '.join(LAYERS)}")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ema", action="store_true", help="the encoder's EMA weights (where the run keeps them)")
    p.add_argument("--out", required=True, help=".npz file to write")
    args = p.parse_intermixed_args(argv)  # overrides may come before, between and after the options
    procs = processes()
    try:
        if Path(args.out).is_dir():
            raise ConfigError(f"--out: {args.out} is a directory; give the .npz file to write")
        overrides = ([f"data.name={args.data}"] if args.data else []) + args.overrides
        layers = tuple(k.strip() for k in args.layer.split(",") if k.strip())
        arrays = embed(args.run, overrides, args.split, layers, args.batch_size, args.checkpoint, args.ema,
                       progress=True)
        if procs.main:
            try:
                write_npz(arrays, args.out)
            except OSError as e:
                raise ConfigError(f"--out: cannot write {args.out}: {e.strerror or e}") from None
    except ConfigError as e:
        return cli_error(e)
    finally:
        shutdown()
    if procs.main:
        shapes = ", ".join(f"{k} {arrays[k].shape[1]}-d" for k in layers)
        print(f"wrote {args.out}: {len(arrays['paths'])} images ({shapes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
