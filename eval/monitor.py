"""train.monitor: an encoder's representation quality while it trains.

Every `train.monitor.every` steps the main process extracts frozen features (the
objective's `features(x)`, eval mode, no gradients) of a fixed set of labelled TRAIN
images (the bank, `bank` of them) and of held-out TEST images (`queries` of them), and
logs for each layer in `layers`

    monitor/knn_<layer>     % of the queries whose weighted k-NN vote over the bank is right
    monitor/linear_<layer>  % right of a softmax regression fitted on the bank (train.monitor.linear)

The k-NN is the weighted vote of Wu et al. 2018 (InstDisc) as solo-learn's
WeightedKNNClassifier runs it, with its defaults k = 20, T = 0.07: the cosine
similarity s_i of the query to each bank feature, the k most similar vote for their
class with weight exp(s_i / T), the class with the largest total wins. It runs on the
training device. The subsets are drawn once with the run's seed, so the figures of
one run are comparable step to step, and the measurement draws nothing from the global
RNG: a monitored run trains exactly as an unmonitored one. Other processes go on to the
next step and wait in its first collective while the main process measures.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from arena.data import to_float, to_uint8
from arena.objective import OBJECTIVES
from arena.registry import ConfigError
from arena.trainer import Hook

from .dim_probes import image_batches, labeled_indices, probe_datasets, subset

LAYERS = ("y", "fc", "conv")  # the probe points of features(x)
CHUNK = 1024  # queries per similarity block: [CHUNK, bank] floats at a time


def check_monitor(cfg) -> None:
    """An objective with an encoder to measure, and layers to measure it at."""
    m = cfg.train.monitor
    objective = OBJECTIVES.get(cfg.objective.name, key="objective.name")
    if objective.generates or not callable(getattr(objective, "features", None)):
        kind = "a generator" if objective.generates else "an objective without features(x)"
        raise ConfigError(f"train.monitor.enabled: objective '{cfg.objective.name}' is {kind}; the monitor "
                          f"measures encoders (dim, supervised); for generators use eval.every (FID/IS/KID)")
    # the numbers' bounds and the layer names are the config schema's (arena/config.py MonitorConfig)
    if not m.layers or len(set(m.layers)) < len(m.layers):
        raise ConfigError(f"train.monitor.layers: expected one or more of {', '.join(LAYERS)}, each once, "
                          f"got {m.layers}")


def knn_predict(queries: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int,
                temperature: float) -> Tensor:
    """[Q] predicted classes: the k bank rows of largest cosine similarity s vote for their
    label with weight exp(s / T) (k is capped at the bank's size)."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    preds = []
    for s in range(0, len(queries), CHUNK):
        q = F.normalize(queries[s:s + CHUNK].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # [q, k]
        votes = torch.zeros(len(q), num_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def linear_accuracy(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, num_classes: int,
                    steps: int) -> float:
    """% right of a softmax regression on standardized features (train statistics), fitted
    full batch by L-BFGS from zero weights (convex: no init to draw, the same every time)."""
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-6)
    x, x_test = (train - mu) / sd, (test - mu) / sd
    w = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # mean cross-entropy + a small L2 on w (1e-4 / 2 |w|^2) so that separable data stays bounded
        loss = F.cross_entropy(x @ w + b, train_labels) + 5e-5 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return 100.0 * int(((x_test @ w + b).argmax(1) == test_labels).sum()) / len(test_labels)


@dataclasses.dataclass
class Split:
    """uint8 images (on the measuring device once used) and their labels."""

    images: Tensor
    labels: Tensor


def _labelled(ds, limit: int, seed: int, key: str) -> Split:
    """Up to `limit` labelled images of `ds` (a seeded subset), as uint8: images read from
    files are converted back (8-bit pixels round-trip exactly), a quarter of float's memory."""
    idx = subset(labeled_indices(ds), limit, seed)
    if len(idx) == 0:
        raise ConfigError(f"train.monitor: the {key} split of {ds.describe()} has no labelled images")
    if ds.in_memory:
        return Split(ds.images[idx], ds.labels[idx])
    xs, ys = zip(*image_batches(ds, idx, 256))  # read once, kept for every measurement
    return Split(to_uint8(torch.cat(xs)), torch.cat(ys))


class Monitor:
    """The hook's state: the bank and query images, read when the hook is made (a dataset
    without classes fails before training) and moved to the device on the first measurement."""

    def __init__(self, cfg):
        self.m = m = cfg.train.monitor
        train_ds, test_ds = probe_datasets(cfg)
        if train_ds.num_classes == 0 or train_ds.multilabel:
            raise ConfigError(f"train.monitor.enabled: {train_ds.describe()} has no single-label classes to "
                              f"classify; turn the monitor off for this dataset")
        self.num_classes = train_ds.num_classes
        self.splits = (_labelled(train_ds, m.bank, cfg.run.seed, "train"),
                       _labelled(test_ds, m.queries, cfg.run.seed + 1, "test"))
        self.device: torch.device | None = None

    def load(self, device: torch.device) -> tuple[Split, Split]:
        if self.device != device:
            self.splits = tuple(Split(s.images.to(device), s.labels.to(device)) for s in self.splits)
            self.device = device
        return self.splits

    @torch.no_grad()
    def features(self, objective, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        out: dict[str, list[Tensor]] = {layer: [] for layer in self.m.layers}
        for s in range(0, len(images), batch_size):
            feats = objective.features(to_float(images[s:s + batch_size]))
            for layer in out:
                out[layer].append(feats[layer].float())
        return {layer: torch.cat(v) for layer, v in out.items()}

    def measure(self, objective, device: torch.device) -> dict[str, float]:
        bank, queries = self.load(device)
        bank_feats, query_feats = self.features(objective, bank.images), self.features(objective, queries.images)
        values = {}
        for layer in self.m.layers:
            pred = knn_predict(query_feats[layer], bank_feats[layer], bank.labels, self.num_classes, self.m.k,
                               self.m.temperature)
            values[f"monitor/knn_{layer}"] = 100.0 * int((pred == queries.labels).sum()) / len(pred)
            if self.m.linear:
                values[f"monitor/linear_{layer}"] = linear_accuracy(
                    bank_feats[layer], bank.labels, query_feats[layer], queries.labels, self.num_classes,
                    self.m.linear_steps)
        return values


def monitor_hook(cfg) -> Hook:
    """The train.monitor hook (main process only); its config checked now, before training."""
    check_monitor(cfg)
    monitor = Monitor(cfg)
    return Hook(every=cfg.train.monitor.every, fn=lambda run, step: monitor.measure(run.objective, run.procs.device))
