"""Nearest neighbours in Y (paper Fig. 7, App. A.3) and local NCE loss maps (Fig. 13).

    python -m eval.neighbours --run runs/dim_l_digits --out nn.png [--k 8]
    python -m eval.neighbours --run runs/dim_l_digits --run runs/dim_g_digits --out nn.png   # side by side
    python -m eval.neighbours --run runs/dim_l_digits --loss-map --out lossmap.png [--n 8]

Neighbours: one query per class (the first test image of each class; the first --n test
images for unlabeled data) and its k nearest test images by L1 distance in Y ("to reflect
the uniform prior", A.3), nearest first, the query itself excluded. One row per query;
the query sits in the first column inside a red frame. For class-labeled data the panel
title (and stderr) also gives the k-NN class agreement with every test image as a query:
the % of the k nearest neighbours that share its class.

Loss map (Fig. 13): for test images x, the local map C(x) comes from the full image and
the global vector Y from the full image or from an occluded copy x * mask
(dim.occlusion.occlusion_mask). The local critic of the run scores every (Y_i, C_j at
location l) pair of a batch; the map shows, at each location l of image i, the NCE loss
-log [ e^{s(i,i,l)} / (e^{s(i,i,l)} + sum_{j != i, l'} e^{s(i,j,l')}) ], i.e. minus the
per-location term of eq. 5, with every location of every other image of the batch as
negatives (as dim.estimators.nce_mi). Each row: clean input, its loss map, occluded
input, its loss map; maps share one colour scale (brighter = higher loss) and are
upsampled to the image size with nearest-neighbour blocks. It needs a run with a local
critic (objective dim with beta > 0).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from arena.data import to_float
from arena.registry import ConfigError, cli_error
from dim.occlusion import occlusion_mask

from . import probes as P
from .cli_args import count_arg, default_device, device_arg, seed_arg
from .dim_probes import conv_encoder, extract, image_batches, load_encoder_run, probe_datasets

MAX_SCALE = 16  # tile upscaling: a 64 px image becomes 1024 px


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> [N, 3, H, W] in [0, 1]."""
    x = (x.float().clamp(-1, 1) + 1) / 2
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def _upscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x


def _frame(x: torch.Tensor, colour=(1.0, 0.0, 0.0), width: int = 1) -> torch.Tensor:
    x = x.clone()
    c = torch.tensor(colour).view(1, 3, 1, 1)
    x[..., :width, :] = c
    x[..., -width:, :] = c
    x[..., :, :width] = c
    x[..., :, -width:] = c
    return x


def query_indices(labels: torch.Tensor, num_classes: int, multilabel: bool, n: int) -> torch.Tensor:
    """The first test image of each class (App. A.3 picks one per class), else the first n."""
    if num_classes > 0 and not multilabel:
        firsts = [int(torch.nonzero(labels == c)[0]) for c in range(num_classes) if (labels == c).any()]
        return torch.tensor(firsts)
    return torch.arange(min(n, len(labels)))


def neighbour_grid(run: str, checkpoint: str, k: int, n: int, device: str, scale: int):
    """-> (image [3, H, W] in [0, 1], title) for one run."""
    cfg, objective, step = load_encoder_run(run, checkpoint, device)
    _, test_ds = probe_datasets(cfg)
    idx = torch.arange(len(test_ds))
    feats, labels, images = extract(objective, image_batches(test_ds, idx, 256, data_cfg=cfg.data), ("y",),
                                    keep_images=True)
    if k >= len(feats["y"]):
        raise ConfigError(f"--k: {k} neighbours asked, but the test split of {run} has {len(feats['y'])} images "
                          f"(at most {len(feats['y']) - 1} neighbours besides the query)")
    q = query_indices(labels, test_ds.num_classes, test_ds.multilabel, n)
    nn_idx = P.nearest_neighbours(feats["y"][q], feats["y"], k, exclude=q)  # [Q, k]
    x = _rgb(to_float(images))
    rows = []
    for qi, row in zip(q.tolist(), nn_idx):
        rows.append(torch.cat([_frame(_upscale(x[qi:qi + 1], scale), width=max(1, scale)),
                               _upscale(x[row], scale)]))
    from torchvision.utils import make_grid

    grid = make_grid(torch.cat(rows), nrow=k + 1, padding=2, pad_value=1.0)
    title = f"{Path(run).name} (step {step})"
    if test_ds.num_classes > 0 and not test_ds.multilabel:
        agree = knn_agreement(feats["y"], labels, k)
        log(f"{run}: {agree:.1f}% of the {k} L1 nearest test neighbours in Y share the query's class "
            f"(every test image as a query)")
        title += f"\n{k}-NN same class: {agree:.1f}%"
    return grid, title


def knn_agreement(feats: torch.Tensor, labels: torch.Tensor, k: int, chunk: int = 1024) -> float:
    """% of the k L1-nearest neighbours (self excluded) sharing the label, over all queries."""
    same = 0.0
    for s in range(0, len(feats), chunk):
        q = torch.arange(s, min(s + chunk, len(feats)))
        nn_idx = P.nearest_neighbours(feats[q], feats, k, exclude=q)
        same += float((labels[nn_idx] == labels[q, None]).float().sum())
    return 100.0 * same / (len(feats) * k)


def check_png(out: Path) -> None:
    """--out must name a .png file: a folder, or a name without the suffix, would make the
    figure land at another path (matplotlib appends '.png')."""
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a directory; give the PNG file to write, e.g. {out / 'nn.png'}")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out: {out} does not end in .png; give the PNG file to write, e.g. "
                          f"{out.with_name(out.name + '.png')}")


def save_panels(panels: list[tuple[torch.Tensor, str]], out: Path) -> None:
    """Panels side by side with titles (matplotlib), or plainly concatenated (torchvision)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from torchvision.utils import save_image

        h = max(p.shape[1] for p, _ in panels)
        padded = [F.pad(p, (0, 4, 0, h - p.shape[1]), value=1.0) for p, _ in panels]
        save_image(torch.cat(padded, 2), out)
        return
    import textwrap

    w = max(3.5, sum(p.shape[2] for p, _ in panels) / 80 + 0.3 * len(panels))
    lines = max(t.count("\n") + 1 for _, t in panels)
    h = max(p.shape[1] for p, _ in panels) / 80 + 0.4 + 0.25 * lines
    fig, axes = plt.subplots(1, len(panels), figsize=(w, h), squeeze=False)
    for ax, (img, title) in zip(axes[0], panels):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        width = max(20, int(w / len(panels) * 14))
        ax.set_title("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- Fig. 13


@torch.no_grad()
def local_nce_loss_map(encoder: torch.nn.Module, critic: torch.nn.Module, x: torch.Tensor,
                       x_global: torch.Tensor | None = None) -> torch.Tensor:
    """Per-location NCE loss [N, h, w]: local map from x, global vector Y from x_global
    (default x), negatives = every location of every other image of the batch."""
    encoder.eval()
    critic.eval()
    out = encoder(x)
    c = out["local"]
    y = out["y"] if x_global is None else encoder(x_global)["y"]
    s = critic(y, c).float()  # [N, N, L], s[i, j, l] = T(y_i, c_j at l)
    n, _, l = s.shape
    pos = torch.diagonal(s, dim1=0, dim2=1).transpose(0, 1)  # [N, L]
    neg = s.masked_fill(torch.eye(n, dtype=torch.bool, device=s.device)[:, :, None], float("-inf"))
    neg_lse = torch.logsumexp(neg.reshape(n, -1), dim=1, keepdim=True)  # over j != i and all l'
    loss = -(pos - torch.logaddexp(pos, neg_lse))  # -log softmax of the positive
    return loss.view(n, c.shape[2], c.shape[3])


def _colour(m: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """[N, h, w] -> [N, 3, h, w] through matplotlib's viridis (grey without matplotlib)."""
    v = ((m - lo) / max(hi - lo, 1e-8)).clamp(0, 1)
    try:
        from matplotlib import colormaps

        rgb = torch.from_numpy(colormaps["viridis"](v.numpy())[..., :3]).float()
        return rgb.permute(0, 3, 1, 2)
    except ImportError:
        return v[:, None].expand(-1, 3, -1, -1)


def loss_map_figure(run: str, checkpoint: str, n: int, batch: int, block: int | None, seed: int,
                    device: str, scale: int, out: Path) -> dict:
    cfg, objective, step = load_encoder_run(run, checkpoint, device)
    player = objective.nets["encoder"]
    if not isinstance(player, torch.nn.ModuleDict) or "local_critic" not in player:
        raise ConfigError(f"--loss-map: run {run} has no local critic (objective '{cfg.objective.name}'"
                          f"{', beta = 0' if cfg.objective.name == 'dim' else ''}); use a local DIM run")
    enc, critic = conv_encoder(objective), player["local_critic"]
    _, test_ds = probe_datasets(cfg)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test_ds), generator=g)[:max(batch, n)]
    x, _ = next(iter(image_batches(test_ds, idx, len(idx))))
    x = x.to(objective.device)
    r = x.shape[-1]
    if block is None:
        block = getattr(cfg.objective, "occlusion_block", 10)
        if (r // block) ** 2 < 2:
            block = max(1, r // 4)  # e.g. 16 px digits: 4 px cells
    elif (r // block) ** 2 < 2:
        raise ConfigError(f"--block: {block} px cells leave fewer than two in a {r}x{r} image (one stays visible, "
                          f"one is occluded); use a block <= {max(1, r // 2)}")
    mask = occlusion_mask(len(x), r, block, generator=g).to(x.device)
    clean = local_nce_loss_map(enc, critic, x)
    occluded = local_nce_loss_map(enc, critic, x, x * mask)
    lo = float(torch.minimum(clean[:n].min(), occluded[:n].min()))
    hi = float(torch.maximum(clean[:n].max(), occluded[:n].max()))
    up = lambda m: F.interpolate(_colour(m[:n].cpu(), lo, hi), size=(r, r), mode="nearest")  # noqa: E731
    cols = [_rgb(x[:n].cpu()), up(clean), _rgb((x * mask)[:n].cpu()), up(occluded)]
    tiles = torch.stack(cols, 1).flatten(0, 1)  # row-major: 4 tiles per image
    from torchvision.utils import make_grid

    grid = make_grid(_upscale(tiles, scale), nrow=4, padding=2, pad_value=1.0)
    title = f"{Path(run).name} step {step}: input | NCE loss | occluded | NCE loss ({lo:.2f}..{hi:.2f})"
    save_panels([(grid, title)], out)
    return {"clean_loss": float(clean.mean()), "occluded_loss": float(occluded.mean()), "block": block,
            "batch": len(x), "range": [lo, hi]}


def log(msg: str) -> None:
    print(f"[neighbours] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.neighbours", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="run directory; repeat for side-by-side panels")
    p.add_argument("--out", required=True, help="PNG to write (a .png file)")
    p.add_argument("--checkpoint", default="latest")
    p.add_argument("--k", type=count_arg(1), default=8, help="neighbours per query")
    p.add_argument("--n", type=count_arg(1), default=10, help="queries for unlabeled data; images for --loss-map")
    p.add_argument("--scale", type=count_arg(1, MAX_SCALE), default=2,
                   help="integer upscaling of each tile (small images)")
    p.add_argument("--loss-map", action="store_true", help="Fig. 13: local NCE loss maps, clean vs occluded")
    p.add_argument("--batch", type=count_arg(2), default=64, help="--loss-map: images in the batch (negatives)")
    p.add_argument("--block", type=count_arg(1), default=None, help="--loss-map: occlusion cell (default: the run's)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--device", type=device_arg, default=default_device())
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        check_png(out)
        if args.loss_map:
            for run in args.run:
                path = out if len(args.run) == 1 else out.with_name(f"{out.stem}_{Path(run).name}{out.suffix}")
                info = loss_map_figure(run, args.checkpoint, args.n, args.batch, args.block, args.seed,
                                       args.device, args.scale, path)
                log(f"{path}: {info}")
        else:
            panels = [neighbour_grid(run, args.checkpoint, args.k, args.n, args.device, args.scale)
                      for run in args.run]
            save_panels(panels, out)
            log(f"wrote {out}")
    except OSError as err:  # an unwritable folder, a full disk
        return cli_error(ConfigError(f"--out: cannot write {err.filename or out}: {err.strerror or err}"))
    except ConfigError as err:
        return cli_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
