"""Train the domain classifier whose features replace Inception's for small domains.

    python -m eval.train_features --data digits --seed 0 --out digits-32.pt
    python -m eval.train_features --data shapes data.resolution=32 --out /tmp/shapes.pt

Trains on the labeled part of the train split, reports accuracy on the test split,
and writes weights + metadata (see eval/features.py) to --out. The files shipped in
eval/weights are never replaced: every digits FID / IS is measured with them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from arena.config import build_dataclass, parse_overrides
from arena.data import DataConfig, NamedErrors, build_dataset, dataset_signature, make_loader_kwargs, to_float
from arena.registry import ConfigError, cli_error

from .cli_args import count_arg, default_device, device_arg, positive_float_arg, seed_arg
from .features import DomainClassifier, save_classifier, shipped_extractors


def _labeled(ds) -> torch.Tensor:
    """Indices of items with a class label (STL-10's unlabeled part has -1)."""
    if ds.multilabel or ds.num_classes == 0:
        raise ConfigError(f"data.name: {ds.name} has no single-label classes to train a classifier on")
    return torch.nonzero(ds.labels >= 0).flatten()


def _batches(ds, indices: torch.Tensor, batch_size: int, data_cfg: DataConfig, shuffle: bool,
             generator: torch.Generator | None = None):
    """(x float [B, C, H, W] in [-1, 1], y [B]) batches; in-memory datasets skip the DataLoader."""
    order = indices[torch.randperm(len(indices), generator=generator)] if shuffle else indices
    if ds.in_memory:
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield to_float(ds.images[idx]), ds.labels[idx]
    else:
        subset = torch.utils.data.Subset(ds, order.tolist())
        yield from NamedErrors(torch.utils.data.DataLoader(subset, batch_size=batch_size,
                                                           **make_loader_kwargs(ds, data_cfg)))


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Light augmentation: the whole batch translated by up to +-max_shift px (edge padding)."""
    if max_shift == 0:
        return x
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    H, W = x.shape[-2:]
    x = F.pad(x, (max_shift,) * 4, mode="replicate")
    return x[..., max_shift + dy:max_shift + dy + H, max_shift + dx:max_shift + dx + W]


@torch.no_grad()
def accuracy(model: DomainClassifier, ds, data_cfg: DataConfig, device, batch_size: int = 256) -> float:
    model.eval()
    idx = _labeled(ds)
    correct = 0
    for x, y in _batches(ds, idx, batch_size, data_cfg, shuffle=False):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / max(1, len(idx))


def train(data_cfg: DataConfig, *, epochs: int, seed: int, batch_size: int = 64, lr: float = 3e-3,
          width: int = 16, feature_dim: int = 128, max_shift: int | None = None, device: str = "cpu",
          log=print) -> tuple[DomainClassifier, dict]:
    """-> (trained classifier, metadata for its weights file)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train_ds, test_ds = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "test")
    idx = _labeled(train_ds)
    model = DomainClassifier(train_ds.channels, train_ds.resolution, train_ds.num_classes, width, feature_dim)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(idx) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    shift = max_shift if max_shift is not None else max(1, train_ds.resolution // 16)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        for x, y in _batches(train_ds, idx, batch_size, data_cfg, shuffle=True, generator=g):
            x, y = _shift(x, shift, g).to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(y), n + len(y)
        if epoch == epochs - 1 or (epoch + 1) % max(1, epochs // 5) == 0:
            log(f"epoch {epoch + 1}/{epochs}  loss {total / n:.4f}  ({time.time() - t0:.1f}s)")
    model.cpu().eval()
    with torch.no_grad():
        sq, count = 0.0, 0
        for x, _ in _batches(train_ds, idx, 256, data_cfg, shuffle=False):
            h = model.features(x)
            sq, count = sq + float(h.double().pow(2).sum()), count + h.numel()
        model.feat_scale.fill_(1.0 / max(math.sqrt(sq / count), 1e-12))  # unit RMS on the train split
    test_acc = accuracy(model, test_ds, data_cfg, "cpu")
    meta = {
        "test_accuracy": round(test_acc, 6),
        "dataset": data_cfg.name,
        "signature": json.dumps(dataset_signature(data_cfg, "train"), sort_keys=True),
        "feat_scale": float(model.feat_scale),
        "epochs": epochs,
        "seed": seed,
    }
    return model, meta


def parse_data_config(name: str, overrides: list[str]) -> DataConfig:
    tree = parse_overrides(overrides)
    extra = [k for k in tree if k != "data"]
    if extra:
        raise ConfigError(f"overrides: only data.key=value is accepted here, got {', '.join(extra)}")
    return build_dataclass(DataConfig, {**tree.get("data", {}), "name": name}, "data")


def check_out(out: Path) -> Path:
    """--out, checked before training: a file (not a folder) in a folder this user can write,
    and not one of the shipped extractors in eval/weights."""
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a directory; give the weights file to write, e.g. {out / 'features.pt'}")
    if out.resolve() in {p.resolve() for p in shipped_extractors().values()}:
        raise ConfigError(f"--out: {out} is a shipped feature extractor (eval/weights), which every FID / IS in its "
                          f"feature space is measured with; write the new weights elsewhere")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out: cannot create the folder {out.parent}: {e.strerror or e}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"--out: {out} cannot be written (no permission)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.train_features", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset name (arena.data registry)")
    p.add_argument("overrides", nargs="*", help="data.key=value")
    p.add_argument("--out", required=True, help="weights file to write (never one of the shipped eval/weights)")
    p.add_argument("--epochs", type=count_arg(1), default=20)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--batch-size", type=count_arg(1), default=64)
    p.add_argument("--lr", type=positive_float_arg, default=3e-3)
    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("--threads", type=count_arg(0, 1024), default=1,
                   help="CPU threads (default 1: this net is too small to gain from more, and on a "
                        "busy machine extra threads spin and slow it down many times)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        data_cfg = parse_data_config(args.data, args.overrides)
        out = check_out(Path(args.out))
        command = " ".join(["python -m eval.train_features", f"--data {args.data}", *args.overrides,
                            f"--out {args.out}", f"--epochs {args.epochs}", f"--seed {args.seed}"])
        model, meta = train(data_cfg, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                            lr=args.lr, device=args.device, log=lambda s: print(s, file=sys.stderr))
        meta["command"] = command
        try:
            save_classifier(model, out, meta)
        except OSError as e:  # checked above; the disk can still fill up
            raise ConfigError(f"--out: cannot write {out}: {e.strerror or e}") from None
    except ConfigError as e:
        return cli_error(e)
    print(json.dumps({"test_accuracy": meta["test_accuracy"], "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
