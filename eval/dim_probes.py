"""Probe a trained encoder (DIM, supervised, VAE, AAE, BiGAN, NAT): the paper's Tables 1-3 for one run.

    python -m eval.dim_probes --run runs/dim_l_digits --table
    python -m eval.dim_probes --run runs/dim_l_digits --probes svm,mlp --layers conv,fc,y --runs 5
    python -m eval.dim_probes --run runs/dim_l_digits --random-init      # the same encoder at step 0

Prints ONE JSON object on its first line of stdout,

    {probe: {layer: value | {"mean", "std", ...}}, "settings": {...}}

appends it with "step" to RUN_DIR/metrics.jsonl, and with --table prints a Markdown
table after it (rows = probe x layer, as the columns of the paper's Table 3). Progress
goes to stderr. Probes (eval.probes): svm, mlp (frozen features at conv / fc / y, and
z, a VAE's posterior sample), semi (the whole encoder fine-tuned: a copy, the run's
weights are untouched), msssim, mine (on --rep-layer, Y by default) and ndm (on
--ndm-layer, by default the objective's own `ndm_layer` where it names one, e.g. the
VAE's z, else --rep-layer). Every probe trains on the TRAIN split and reports on the
TEST split. Accuracies in %, MI / NDM in nats.

Features are extracted in batches with the encoder frozen (eval mode, no gradients),
each batch moved to the CPU. Labeled training images only (STL-10's 100k unlabeled
images carry label -1 and are skipped); --max-train / --max-test take a seeded random
subset for quick looks. Multi-label data (CelebA) gets per-attribute accuracy: mean,
min and max over the attributes (Fig. 10).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from arena.data import ImageDataset, NamedErrors, build_dataset, make_loader_kwargs, to_uint8
from arena.objective import build_objective, data_info
from arena.registry import ConfigError, Registry, cli_error
from arena.rundir import append_metrics, check_links
from arena.runs import load_run, read_run_config

from . import probes as P
from .cli_args import default_device, device_arg, seed_arg

# Probe points of features(): every encoder gives conv, fc, y; a VAE also z, a posterior sample
LAYERS = ("conv", "fc", "y", "z")
DEFAULT_LAYERS = ("conv", "fc", "y")
DEFAULT_PROBES = ("svm", "mlp", "msssim", "mine", "ndm")  # semi fine-tunes the encoder: ask for it
# The probes' counters (ProbeSettings fields, each a flag --NAME-WITH-DASHES): the one list read by the
# checks, the command line, and eval.reproduce's scaled settings and dry-run commands.
COUNTS = ("runs", "mlp_epochs", "semi_epochs", "msssim_epochs", "mine_steps", "ndm_steps")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def log(msg: str) -> None:
    print(f"[dim_probes] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- loading


def load_encoder_run(run_dir: str | Path, checkpoint: str = "latest", device: str = "cpu",
                     random_init: bool = False):
    """-> (cfg, objective, step). random_init: the objective built from the run's config with
    the trainer's seed and no weights loaded, i.e. exactly the run's encoder at step 0."""
    run_dir = Path(run_dir)
    if not random_init:
        cfg, objective, step = load_run(run_dir, checkpoint, device)
    else:
        cfg = read_run_config(run_dir)
        objective, step = untrained_objective(cfg, device), 0
    if not callable(getattr(objective, "features", None)):
        raise ConfigError(f"objective '{cfg.objective.name}' has no features(x); the probes need an encoder "
                          f"objective ({', '.join(encoder_objectives())})")
    return cfg, objective, step


def encoder_objectives() -> list[str]:
    """The registered objectives whose features(x) the probes read (dim, supervised, the baselines)."""
    from arena.objective import OBJECTIVES

    return [n for n in OBJECTIVES.names() if callable(getattr(OBJECTIVES.get(n), "features", None))]


def untrained_objective(cfg, device: str = "cpu"):
    """The objective built from `cfg` exactly as the trainer builds it at step 0 (its seed,
    no weights loaded), nets in eval mode: a run's encoder before training."""
    info = data_info(build_dataset(cfg.data, "train"))
    torch.manual_seed(cfg.run.seed)  # as arena.trainer.train seeds before building the objective
    objective = build_objective(cfg, info)
    objective.nets.to(device).eval()
    return objective


def conv_encoder(objective) -> torch.nn.Module:
    """The conv encoder (x -> {conv, fc, y, local}) inside the objective's encoder player."""
    player = objective.nets["encoder"]
    return player["encoder"] if isinstance(player, torch.nn.ModuleDict) else player


def probe_datasets(cfg) -> tuple[ImageDataset, ImageDataset]:
    """Train and test splits without augmentation (features of the stored images)."""
    data = dataclasses.replace(cfg.data, augment=False)
    return build_dataset(data, "train"), build_dataset(data, "test")


def labeled_indices(ds: ImageDataset) -> torch.Tensor:
    if ds.num_classes == 0:
        return torch.arange(len(ds))
    if ds.multilabel:
        return torch.nonzero((ds.labels >= 0).all(1)).flatten()
    return torch.nonzero(ds.labels >= 0).flatten()


def subset(idx: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if limit <= 0 or limit >= len(idx):
        return idx
    pick = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:limit]
    return idx[pick.sort().values]


def image_batches(ds: ImageDataset, idx: torch.Tensor, batch_size: int, shuffle: bool = False,
                  seed: int = 0, data_cfg=None):
    """Re-iterable (x in [-1, 1], labels) batches of ds[idx]: slices of the uint8 images for
    in-memory datasets, a DataLoader for the others."""
    if ds.in_memory:
        return P.ImageBatches(ds.images[idx], ds.labels[idx], batch_size, shuffle, seed)
    kwargs = make_loader_kwargs(ds, data_cfg) if data_cfg is not None else {}
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx.tolist()), batch_size=batch_size,
                                         shuffle=shuffle, generator=torch.Generator().manual_seed(seed), **kwargs)
    return NamedErrors(loader)  # a worker's unreadable image: its message, not the worker's traceback


@torch.no_grad()
def extract(objective, batches, layers=DEFAULT_LAYERS, keep_images: bool = False, ema: bool = False):
    """Frozen features of every batch -> ({layer: [N, D] CPU float}, labels, uint8 images or None)."""
    feats: dict[str, list] = {k: [] for k in layers}
    labels, images = [], []
    for x, y in batches:
        out = objective.features(x, ema=True) if ema else objective.features(x)
        if missing := [k for k in layers if k not in out]:
            raise ConfigError(f"layer(s) {', '.join(missing)}: objective '{type(objective).__name__}' gives "
                              f"no such features; it gives {', '.join(out)}")
        for k in layers:
            feats[k].append(out[k].float().cpu())
        labels.append(y)
        if keep_images:
            images.append(to_uint8(x))
    return ({k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels),
            torch.cat(images) if keep_images else None)


# ---------------------------------------------------------------------------- probes


@dataclasses.dataclass
class ProbeSettings:
    probes: tuple[str, ...] = DEFAULT_PROBES
    layers: tuple[str, ...] = DEFAULT_LAYERS
    rep_layer: str = "y"  # code for msssim / mine (and ndm unless ndm_layer says otherwise)
    ndm_layer: str = ""  # code for ndm; "": the objective's ndm_layer when it names one, else rep_layer
    runs: int = 5  # svm seeds
    seed: int = 0
    batch_size: int = 256  # feature extraction
    svm_solver: str = "sgd"
    svm_c: float = 1.0
    mlp_epochs: int = 100
    semi_epochs: int = 20
    msssim_epochs: int = 30
    mine_steps: int = 3000
    ndm_steps: int = 3000
    max_train: int = 0  # 0 = all labeled training images
    max_test: int = 0
    device: str = "cpu"
    ema: bool = False

    def check(self, flags: dict[str, str] | None = None) -> None:
        """ConfigError naming the flag of the first bad setting (before any model is loaded);
        `flags` names a caller's own flag for a field (e.g. {'runs': '--svm-runs'})."""
        flags = flags or {}
        if not self.probes:
            raise ConfigError(f"--probes: empty; choose from {', '.join(PROBES.names())}")
        for p in self.probes:
            PROBES.get(p, key="--probes")
        if not self.layers:
            raise ConfigError(f"--layers: empty; choose from {', '.join(LAYERS)}")
        for k in (*self.layers, self.rep_layer, *([self.ndm_layer] if self.ndm_layer else [])):
            if k not in LAYERS:
                raise ConfigError(f"--layers / --rep-layer / --ndm-layer: unknown layer '{k}'; valid choices: "
                                  f"{', '.join(LAYERS)}")
        # a mean over 0 SVM runs is NaN, a batch of 0 never ends: counts are >= 1
        for name in (*COUNTS, "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flags.get(name, flag(name))} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train", "max_test"):  # 0 means all; a negative number is a mistake, not "all"
            if getattr(self, name) < 0:
                raise ConfigError(f"{flags.get(name, flag(name))} must be >= 0 (0 = all), got {getattr(self, name)}")
        if not self.svm_c > 0:
            raise ConfigError(f"--svm-c must be > 0, got {self.svm_c}")


@dataclasses.dataclass
class ProbeInputs:
    """What a probe gets: the run, the settings, and the features ({layer: [N, D]}), labels and
    (when a probe asked for them) uint8 images of the train and test subsets."""

    cfg: object
    objective: object
    s: ProbeSettings
    train_ds: ImageDataset
    test_ds: ImageDataset
    tr_idx: torch.Tensor
    te_idx: torch.Tensor
    f_tr: dict
    y_tr: torch.Tensor
    x_tr: torch.Tensor | None
    f_te: dict
    y_te: torch.Tensor
    x_te: torch.Tensor | None
    timed: Callable[[str, Callable], object]  # runs and logs one measurement


@dataclasses.dataclass(frozen=True)
class Probe:
    run: Callable[[ProbeInputs], dict]  # -> {layer: value}
    unit: str
    needs_labels: bool = False  # skipped (with a note) on unlabeled data
    on_code: bool = False  # measures the --rep-layer code
    needs_images: bool = False  # also reads the images


PROBES: Registry[Probe] = Registry("probe")


def probe(name: str, unit: str, **facts):
    def add(fn: Callable[[ProbeInputs], dict]) -> Callable[[ProbeInputs], dict]:
        PROBES.register(name)(Probe(fn, unit, **facts))
        return fn

    return add


@probe("svm", "% test accuracy", needs_labels=True)
def _svm(c: ProbeInputs) -> dict:
    s = c.s
    return {k: c.timed(f"svm/{k}", lambda k=k: P.svm_probe(
        c.f_tr[k], c.y_tr, c.f_te[k], c.y_te, runs=s.runs, seed=s.seed, solver=s.svm_solver, C=s.svm_c))
        for k in s.layers}


@probe("mlp", "% test accuracy", needs_labels=True)
def _mlp(c: ProbeInputs) -> dict:
    s = c.s
    return {k: c.timed(f"mlp/{k}", lambda k=k: P.mlp_probe(
        c.f_tr[k], c.y_tr, c.f_te[k], c.y_te, num_classes=c.train_ds.num_classes, epochs=s.mlp_epochs,
        seed=s.seed, device=s.device)) for k in s.layers}


@probe("semi", "% test accuracy", needs_labels=True)
def _semi(c: ProbeInputs) -> dict:
    s, data = c.s, c.cfg.data
    aug_train = build_dataset(data, "train")  # the dataset's own training augmentation
    return {"conv": c.timed("semi/conv", lambda: P.semi_probe(
        conv_encoder(c.objective), image_batches(aug_train, c.tr_idx, 64, shuffle=True, seed=s.seed, data_cfg=data),
        image_batches(c.test_ds, c.te_idx, s.batch_size, data_cfg=data),
        num_outputs=c.train_ds.num_classes, multilabel=c.train_ds.multilabel, epochs=s.semi_epochs,
        seed=s.seed, device=s.device, log=log))}


@probe("msssim", "MS-SSIM in [0, 1]", on_code=True, needs_images=True)
def _msssim(c: ProbeInputs) -> dict:
    k, s = c.s.rep_layer, c.s
    return {k: c.timed(f"msssim/{k}", lambda: P.msssim_probe(
        c.f_tr[k], c.x_tr, c.f_te[k], c.x_te, epochs=s.msssim_epochs, seed=s.seed, device=s.device))}


@probe("mine", "nats", on_code=True, needs_images=True)
def _mine(c: ProbeInputs) -> dict:
    k, s = c.s.rep_layer, c.s
    return {k: c.timed(f"mine/{k}", lambda: P.mine_estimate(
        c.x_tr, c.f_tr[k], c.x_te, c.f_te[k], steps=s.mine_steps, seed=s.seed, device=s.device))}


def ndm_layer(objective, s: ProbeSettings) -> str:
    """The code NDM reads: --ndm-layer, else the objective's own (a VAE's objective.ndm_code), else --rep-layer."""
    return s.ndm_layer or getattr(objective, "ndm_layer", None) or s.rep_layer


@probe("ndm", "nats", on_code=True)
def _ndm(c: ProbeInputs) -> dict:
    k, s = ndm_layer(c.objective, c.s), c.s
    return {name: c.timed(f"ndm/{name}", lambda sigmoid=sigmoid: P.ndm(
        c.f_tr[k], c.f_te[k], sigmoid=sigmoid, steps=s.ndm_steps, seed=s.seed, device=s.device))
        for name, sigmoid in ((f"sigmoid({k})", True), (k, False))}


def run_probes(cfg, objective, s: ProbeSettings) -> tuple[dict, dict]:
    """All requested probes on one encoder -> (results {probe: {layer: value}}, settings)."""
    s.check()
    train_ds, test_ds = probe_datasets(cfg)
    labeled = train_ds.num_classes > 0
    needs_labels = [p for p in s.probes if PROBES.get(p).needs_labels]
    if needs_labels and not labeled:
        log(f"{cfg.data.name} has no labels: skipping {', '.join(sorted(set(needs_labels)))}")
    probes = [p for p in s.probes if labeled or p not in needs_labels]
    tr_idx = subset(labeled_indices(train_ds), s.max_train, s.seed)
    te_idx = subset(labeled_indices(test_ds), s.max_test, s.seed + 1)
    uses_code = any(PROBES.get(p).on_code for p in probes)
    codes = ({s.rep_layer} if uses_code else set()) | ({ndm_layer(objective, s)} if "ndm" in probes else set())
    layers = sorted(set(s.layers) | codes, key=LAYERS.index)
    keep_images = any(PROBES.get(p).needs_images for p in probes)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    log(f"features of {len(tr_idx)} train / {len(te_idx)} test images ({train_ds.describe()})")
    f_tr, y_tr, x_tr = extract(objective, image_batches(train_ds, tr_idx, s.batch_size, data_cfg=cfg.data),
                               layers, keep_images, s.ema)
    f_te, y_te, x_te = extract(objective, image_batches(test_ds, te_idx, s.batch_size, data_cfg=cfg.data),
                               layers, keep_images, s.ema)
    timings["features"] = time.perf_counter() - t0

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t, 2)
        log(f"{name}: {json.dumps(out)[:200]} ({timings[name]:.1f}s)")
        return out

    inputs = ProbeInputs(cfg, objective, s, train_ds, test_ds, tr_idx, te_idx, f_tr, y_tr, x_tr, f_te, y_te, x_te,
                         timed)
    results = {p: PROBES.get(p).run(inputs) for p in probes}
    settings = {
        **{f.name: getattr(s, f.name) for f in dataclasses.fields(s)},
        "probes": list(probes), "layers": list(s.layers),
        "dataset": cfg.data.name, "resolution": cfg.data.resolution, "n_train": len(tr_idx), "n_test": len(te_idx),
        "units": {p: PROBES.get(p).unit for p in PROBES.names()},
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    if "msssim" in probes:
        settings["msssim_config"] = P.msssim_settings(cfg.data.resolution)
    return results, settings


# ---------------------------------------------------------------------------- output


def fmt(v) -> str:
    if isinstance(v, dict):
        if "min" in v:  # per-attribute accuracy
            return f"{v['mean']:.2f} (min {v['min']:.2f}, max {v['max']:.2f})"
        return f"{v['mean']:.2f} ± {v['std']:.2f}"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def markdown_table(results: dict, title: str = "value") -> str:
    rows = ["| probe | layer | " + title + " |", "|---|---|---|"]
    for probe, by_layer in results.items():
        if probe == "settings":
            continue
        for layer, v in by_layer.items():
            rows.append(f"| {probe} | {layer} | {fmt(v)} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    d = ProbeSettings()
    p = argparse.ArgumentParser(prog="python -m eval.dim_probes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (runs/NAME)")
    p.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint directory")
    p.add_argument("--random-init", action="store_true",
                   help="probe the run's encoder at step 0 (built from its config.yaml, no weights loaded)")
    p.add_argument("--probes", default=",".join(d.probes), help=f"comma list of {', '.join(PROBES.names())}")
    p.add_argument("--layers", default=",".join(d.layers), help=f"svm / mlp probe points from {','.join(LAYERS)}")
    p.add_argument("--rep-layer", default=d.rep_layer, help="code for msssim, mine and ndm (default y)")
    p.add_argument("--ndm-layer", default=d.ndm_layer,
                   help="code for ndm (default: the objective's ndm_layer, e.g. a VAE's z, else --rep-layer)")
    p.add_argument("--seed", type=seed_arg, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="feature extraction batch")
    p.add_argument("--svm-solver", choices=("sgd", "liblinear"), default=d.svm_solver)
    p.add_argument("--svm-c", type=float, default=d.svm_c)
    for name in COUNTS:  # --runs: the svm seeds (mean and std)
        p.add_argument(flag(name), type=int, default=getattr(d, name))
    p.add_argument("--max-train", type=int, default=0, help="random subset of labeled train images (0 = all)")
    p.add_argument("--max-test", type=int, default=0, help="random subset of test images (0 = all)")
    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("--ema", action="store_true", help="probe the EMA copy of the encoder (if the run keeps one)")
    p.add_argument("--table", action="store_true", help="also print a Markdown table")
    p.add_argument("--no-append", action="store_true", help="do not append to RUN_DIR/metrics.jsonl")
    return p


def settings_from_args(args) -> ProbeSettings:
    split = lambda s: tuple(v.strip() for v in s.split(",") if v.strip())  # noqa: E731
    return ProbeSettings(
        probes=split(args.probes), layers=split(args.layers), rep_layer=args.rep_layer, ndm_layer=args.ndm_layer,
        seed=args.seed,
        batch_size=args.batch_size, svm_solver=args.svm_solver, svm_c=args.svm_c, max_train=args.max_train,
        max_test=args.max_test, device=args.device, ema=args.ema, **{n: getattr(args, n) for n in COUNTS})


def probe_command(run_dir, s: ProbeSettings, random_init: bool = False) -> str:
    """The `python -m eval.dim_probes` line that measures what run_probes(..., s) measures."""
    d = ProbeSettings()
    parts = [f"python -m eval.dim_probes --run {run_dir}", *(["--random-init"] if random_init else []),
             f"--probes {','.join(s.probes)}", f"--layers {','.join(s.layers)}"]
    for name in ("rep_layer", "ndm_layer", "seed", "batch_size", "svm_solver", "svm_c", *COUNTS, "max_train", "max_test"):
        if getattr(s, name) != getattr(d, name):
            parts.append(f"{flag(name)} {getattr(s, name)}")
    return " ".join(parts + (["--ema"] if s.ema else []))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        s = settings_from_args(args)
        s.check()
        if not args.no_append:
            check_links(args.run)  # metrics.jsonl is appended to: refused now, not after the probes
        t0 = time.perf_counter()
        cfg, objective, step = load_encoder_run(args.run, args.checkpoint, args.device, args.random_init)
        if s.ema and "encoder" not in objective.ema:
            raise ConfigError("--ema: this run keeps no EMA copy of the encoder")
        results, settings = run_probes(cfg, objective, s)
    except ConfigError as err:
        return cli_error(err)
    settings.update(run=str(args.run), checkpoint="random-init" if args.random_init else args.checkpoint,
                    random_init=args.random_init, step=step, objective=cfg.objective.name,
                    wall_seconds=round(time.perf_counter() - t0, 1))
    out = {**results, "settings": settings}
    print(json.dumps(out), flush=True)
    if not args.no_append:
        try:
            append_metrics(args.run, {"step": step, **out})
        except ConfigError as err:
            return cli_error(err)
    if args.table:
        title = f"{cfg.name} step {step}" + (" (random init)" if args.random_init else "")
        print()
        print(markdown_table(results, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
