"""Representation probes of the DIM paper (sec. 4.1, Tables 1-3, App. A.3-A.5).

Pure functions on tensors, so tests can run them on synthetic features; the CLIs
(`eval.dim_probes`, `eval.neighbours`, `eval.ablation`) feed them a trained run.

    svm_probe        linear SVM, hinge loss, standardized features       (Table 3 "SVM")
    mlp_probe        Linear 200 - BN - dropout 0.1 - ReLU - Linear       (Tables 1-2)
    semi_probe       fine-tune the whole encoder + that head             (Table 2 "SS")
    msssim_probe     decoder from the frozen code, L2 loss, MS-SSIM      (Table 3 "MS-SSIM")
    mine_estimate    MINE / DV lower bound on I(X; Y)                    (Table 3 "I(X, Y)")
    ndm              DV estimate of KL(Y || Y shuffled per dimension)    (Table 3 "NDM", Fig. 11)

Conventions: every probe is trained on the TRAIN split and reports on the TEST split
(never a split of train reported as test, the bug REFERENCES.md lists). Accuracies are
in percent, like the paper's tables; MI and NDM in nats. Labels are a LongTensor [N]
of classes, or [N, K] of 0/1 attributes (CelebA): then accuracy is per attribute and
the probes report its mean, min and max over attributes (Fig. 10).
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dim.heads import MLPHead

# ---------------------------------------------------------------------------- helpers


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy() if isinstance(t, Tensor) else np.asarray(t)


def _multilabel(labels: Tensor) -> bool:
    return labels.dim() == 2


def _summary(per_run: list[float]) -> dict:
    a = np.asarray(per_run, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "runs": len(a)}


def _attribute_summary(per_run_attr: list[np.ndarray]) -> dict:
    """Runs x attributes accuracies -> mean/min/max over attributes (of the run average), std over runs."""
    a = np.stack(per_run_attr)  # [runs, K]
    per_attr = a.mean(0)
    return {"mean": float(per_attr.mean()), "min": float(per_attr.min()), "max": float(per_attr.max()),
            "std": float(a.mean(1).std(ddof=1)) if len(a) > 1 else 0.0, "runs": len(a),
            "per_attribute": [round(float(v), 3) for v in per_attr]}


def _accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean() * 100.0)


# ---------------------------------------------------------------------------- linear SVM


def _hinge_svm(solver: str, seed: int, C: float, max_iter: int):
    from sklearn.linear_model import SGDClassifier
    from sklearn.svm import LinearSVC

    if solver == "liblinear":
        # Exact solver of the hinge-loss primal's dual; the seed only orders coordinate descent,
        # so runs differ only when it stops before convergence.
        return LinearSVC(loss="hinge", C=C, dual=True, max_iter=max_iter, random_state=seed)
    if solver == "sgd":
        # Averaged SGD on the same objective (alpha = 1 / (C n)); the seed shuffles the data,
        # which is what gives the paper's "mean +- std over five runs" a spread.
        return SGDClassifier(loss="hinge", alpha=1e-4 / C, max_iter=max_iter, tol=1e-4, average=True,
                             random_state=seed)
    raise ValueError(f"svm solver must be 'liblinear' or 'sgd', got {solver!r}")


def svm_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
              runs: int = 5, seed: int = 0, solver: str = "sgd", C: float = 1.0, max_iter: int = 1000) -> dict:
    """Linear SVM with the hinge loss on standardized features (mean/std from TRAIN only),
    fit on train, accuracy (%) on test; `runs` seeds -> {mean, std, runs}.

    Multi-label [N, K] labels: one binary SVM per attribute -> {mean, min, max, std, runs,
    per_attribute} (attributes with one class in train predict that class).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(_np(train_feats))
    xtr, xte = scaler.transform(_np(train_feats)), scaler.transform(_np(test_feats))
    ytr, yte = _np(train_labels).astype(np.int64), _np(test_labels).astype(np.int64)
    results = []
    for r in range(runs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a probe reports what it reached
            if ytr.ndim == 1:
                clf = _hinge_svm(solver, seed + r, C, max_iter).fit(xtr, ytr)
                results.append(_accuracy(clf.predict(xte), yte))
            else:
                accs = []
                for k in range(ytr.shape[1]):
                    if len(np.unique(ytr[:, k])) < 2:
                        accs.append(_accuracy(np.full(len(yte), ytr[0, k]), yte[:, k]))
                        continue
                    clf = _hinge_svm(solver, seed + r, C, max_iter).fit(xtr, ytr[:, k])
                    accs.append(_accuracy(clf.predict(xte), yte[:, k]))
                results.append(np.asarray(accs))
    return _summary(results) if ytr.ndim == 1 else _attribute_summary(results)


# ---------------------------------------------------------------------------- MLP head


def _num_outputs(labels: Tensor, num_classes: int | None) -> int:
    if _multilabel(labels):
        return labels.shape[1]
    return int(num_classes or int(labels.max()) + 1)


def _classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    if _multilabel(labels):
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels)


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-output correct counts: [1] for classes, [K] for attributes (summed over the batch)."""
    if _multilabel(labels):
        return ((logits > 0).long() == labels).sum(0).double()
    return (logits.argmax(1) == labels).sum().double().reshape(1)


def _accuracy_result(acc: Tensor) -> float | dict:
    """acc: [1] (classes) or [K] (attributes), in %."""
    if acc.numel() == 1:
        return float(acc)
    return {"mean": float(acc.mean()), "min": float(acc.min()), "max": float(acc.max()),
            "per_attribute": [round(float(v), 3) for v in acc]}


def _milestones(epochs: int) -> list[int]:
    # The official probe drops the lr x0.1 at epochs 50 and 100 of its schedule; for a
    # short schedule we drop at the same fractions we can afford: halfway and at 3/4.
    return sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})


def mlp_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
              num_classes: int | None = None, epochs: int = 100, batch_size: int = 64, lr: float = 1e-4,
              hidden: int = 200, dropout: float = 0.1, average_last: int | None = None, seed: int = 0,
              device: str | torch.device = "cpu") -> float | dict:
    """The MLP probe on frozen features: Adam(lr), lr x0.1 at 1/2 and 3/4 of `epochs`.

    Reports the TEST accuracy (%) averaged over the last `average_last` epochs (default
    a tenth of them), as the paper averaged its last 100 epochs rather than picking one.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = torch.device(device)
    xtr, ytr = train_feats.float().flatten(1), train_labels.long()
    xte, yte = test_feats.float().flatten(1).to(device), test_labels.long().to(device)
    # Standardize with train statistics (the official probe feeds raw features to a BN'd head; the
    # first Linear sees them unnormalized, which makes lr 1e-4 depend on the feature scale).
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = ((xtr - mu) / sd).to(device), (xte - mu.to(device)) / sd.to(device)
    ytr = ytr.to(device)
    head = MLPHead(xtr.shape[1], _num_outputs(ytr, num_classes), hidden, dropout).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(epochs), 0.1)
    average_last = average_last or max(1, epochs // 10)
    history = []
    n = len(xtr)
    for epoch in range(epochs):
        head.train()
        perm = torch.randperm(n, generator=g).to(device)
        for s in range(0, n - 1, batch_size):  # a last batch of 1 would break BatchNorm
            idx = perm[s:s + batch_size]
            if len(idx) < 2:
                continue
            loss = _classification_loss(head(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if epoch >= epochs - average_last:
            history.append(_evaluate_head(head, xte, yte, batch_size=1024))
    return _accuracy_result(torch.stack(history).mean(0))


@torch.no_grad()
def _evaluate_head(head: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    head.eval()
    correct = 0
    for s in range(0, len(x), batch_size):
        correct = correct + _correct(head(x[s:s + batch_size]), y[s:s + batch_size])
    return correct / len(x) * 100.0


# ---------------------------------------------------------------------------- batches of images


class ImageBatches:
    """Re-iterable (x float [-1, 1], y) batches from uint8 or float images held in memory."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.g) if self.shuffle else torch.arange(n)
        for s in range(0, n, self.batch_size):
            idx = order[s:s + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            x = self.images[idx]
            x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()  # = arena.data.to_float
            yield x, self.labels[idx]


# ---------------------------------------------------------------------------- semi-supervised


def semi_probe(encoder: nn.Module, train_batches: Iterable, test_batches: Iterable, num_outputs: int,
               multilabel: bool = False, epochs: int = 20, lr: float = 1e-4, tap: str = "conv",
               seed: int = 0, device: str | torch.device = "cpu", log: Callable[[str], None] | None = None
               ) -> float | dict:
    """Fine-tune a COPY of `encoder` with the MLP head on its last conv layer (sec. 4.1, STL-10).

    encoder(x) must return a dict with `tap` ("conv": the last conv map). Batches are
    (x in [-1, 1], labels) pairs, re-iterable each epoch (a DataLoader or ImageBatches).
    Adam(lr) on encoder + head, lr x0.1 at 1/2 and 3/4 of the epochs; test accuracy (%)
    after the last epoch. The caller's encoder is not modified.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    enc = copy.deepcopy(encoder).to(device).requires_grad_(True)
    x0, y0 = next(iter(test_batches))
    with torch.no_grad():
        enc.eval()
        n_in = enc(x0[:2].to(device))[tap].flatten(1).shape[1]
    head = MLPHead(n_in, num_outputs).to(device)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(epochs), 0.1)
    for epoch in range(epochs):
        enc.train()
        head.train()
        total, count = 0.0, 0
        for x, y in train_batches:
            if len(x) < 2:
                continue
            x, y = x.to(device), y.to(device)
            loss = _classification_loss(head(enc(x)[tap]), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()), count + 1
        sched.step()
        if log is not None:
            log(f"semi epoch {epoch + 1}/{epochs}: train loss {total / max(count, 1):.4f}")
    enc.eval()
    head.eval()
    correct, n = 0, 0
    with torch.no_grad():
        for x, y in test_batches:
            x, y = x.to(device), y.to(device)
            correct = correct + _correct(head(enc(x)[tap]), y)
            n += len(x)
    return _accuracy_result(correct / n * 100.0)


# ---------------------------------------------------------------------------- MS-SSIM

# The torchmetrics defaults (5 scales, 11x11 Gaussian with sigma 1.5) need images of at
# least 176 px. We keep the algorithm and scale it down: a 3x3 Gaussian (sigma 0.4; it
# keeps the standard window's ~7 sigma width) and as many scales as the image allows,
# weighted by the first of the standard betas renormalized to sum to 1:
#   16 px: 3 scales (16, 8, 4 px), 32 px: 4 scales, >= 64 px: all 5.
# Images are compared in [-1, 1] (data_range (-1, 1), so a data range of 2); normalize="relu"
# clamps negative per-scale terms to 0 (a bad decoder gives 0, never NaN from a negative
# number to a fractional power); identical images give exactly 1.
MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. (2003)
MSSSIM_KERNEL = 3
MSSSIM_SIGMA = 0.4


def msssim_scales(resolution: int) -> int:
    """The most scales torchmetrics accepts at this size for a 3x3 kernel (at least 1)."""
    for n in range(len(MSSSIM_BETAS), 1, -1):
        # torchmetrics' checks: side >= 2**n and side // max(1, n-1)**2 > kernel - 1
        if resolution >= 2 ** n and resolution // max(1, n - 1) ** 2 > MSSSIM_KERNEL - 1:
            return n
    return 1


def msssim_metric(resolution: int):
    """torchmetrics' MultiScaleStructuralSimilarityIndexMeasure configured for small images."""
    from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure

    n = msssim_scales(resolution)
    betas = tuple(b / sum(MSSSIM_BETAS[:n]) for b in MSSSIM_BETAS[:n])
    return MultiScaleStructuralSimilarityIndexMeasure(
        gaussian_kernel=True, kernel_size=MSSSIM_KERNEL, sigma=MSSSIM_SIGMA, betas=betas,
        data_range=(-1.0, 1.0), normalize="relu", reduction="elementwise_mean")


def msssim_settings(resolution: int) -> dict:
    n = msssim_scales(resolution)
    return {"scales": n, "kernel": MSSSIM_KERNEL, "sigma": MSSSIM_SIGMA,
            "betas": [round(b / sum(MSSSIM_BETAS[:n]), 4) for b in MSSSIM_BETAS[:n]], "data_range": [-1, 1],
            "normalize": "relu"}


@torch.no_grad()
def msssim(a: Tensor, b: Tensor, batch_size: int = 256) -> float:
    """Mean MS-SSIM between image batches a, b [N, C, H, W] in [-1, 1] (our small-image config)."""
    metric = msssim_metric(a.shape[-1]).to(a.device)
    for s in range(0, len(a), batch_size):
        metric.update(a[s:s + batch_size].float(), b[s:s + batch_size].float())
    return float(metric.compute())


class Decoder(nn.Module):
    """Code [B, D] -> image [B, C, R, R] in [-1, 1]: Linear to 4x4, then stride-2 transposed
    convs (4x4, BN, ReLU) doubling the side up to R, tanh (a DCGAN generator, as the paper's
    decoders were, App. A.1)."""

    def __init__(self, n_in: int, channels: int, resolution: int, width: int = 64):
        super().__init__()
        ups = int(round(math.log2(resolution / 4)))
        if ups < 1 or 4 * 2 ** ups != resolution:
            raise ValueError(f"decoder needs a resolution 4 * 2^k (k >= 1), got {resolution}")
        c = width * 2 ** (ups - 1)
        self.c0 = c
        self.fc = nn.Sequential(nn.Linear(n_in, c * 16), nn.BatchNorm1d(c * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for k in range(ups - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(self.fc(h.flatten(1)).view(len(h), self.c0, 4, 4))


def msssim_probe(train_codes: Tensor, train_images: Tensor, test_codes: Tensor, test_images: Tensor,
                 epochs: int = 30, batch_size: int = 64, lr: float = 1e-3, width: int = 64, seed: int = 0,
                 device: str | torch.device = "cpu") -> float:
    """Train a decoder from the frozen codes with the L2 loss on TRAIN; MS-SSIM of its
    reconstructions of the TEST images. Images: uint8 or float in [-1, 1], [N, C, R, R]."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    to_f = (lambda t: t.float() / 127.5 - 1) if train_images.dtype == torch.uint8 else (lambda t: t.float())
    ctr, cte = train_codes.float().flatten(1), test_codes.float().flatten(1)
    mu, sd = ctr.mean(0), ctr.std(0).clamp_min(1e-6)  # standardize codes (train statistics)
    ctr, cte = ((ctr - mu) / sd).to(device), ((cte - mu) / sd).to(device)
    c, r = train_images.shape[1], train_images.shape[-1]
    dec = Decoder(ctr.shape[1], c, r, width).to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    n = len(ctr)
    for _ in range(epochs):
        dec.train()
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            if len(idx) < 2:
                continue
            x = to_f(train_images[idx]).to(device)
            loss = F.mse_loss(dec(ctr[idx.to(device)]), x)  # the L2 reconstruction loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    dec.eval()
    metric = msssim_metric(r).to(device)
    with torch.no_grad():
        for s in range(0, len(cte), 256):
            metric.update(dec(cte[s:s + 256]), to_f(test_images[s:s + 256]).to(device))
    return float(metric.compute())


# ---------------------------------------------------------------------------- DV bound (MINE, NDM)


def dv_bound(t_joint: Tensor, t_marginal: Tensor) -> Tensor:
    """Donsker-Varadhan: E_J[T] - log E_M[e^T] (paper eq. 2), with log-mean-exp via logsumexp."""
    return t_joint.mean() - (torch.logsumexp(t_marginal.flatten(), 0) - math.log(t_marginal.numel()))


def _mlp(n_in: int, hidden: int, n_out: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(n_in, hidden), nn.ReLU()]
        n_in = hidden
    return nn.Sequential(*mods, nn.Linear(n_in, n_out))


class MineStatistics(nn.Module):
    """T(x, y) = head([a(x); b(y)]): a is a small conv net on images (or an MLP on vectors),
    b an MLP on y. The embeddings are computed once per sample, so marginal pairs
    (x_i, y_perm(i)) cost one head evaluation each."""

    def __init__(self, x_shape: tuple[int, ...], y_dim: int, hidden: int = 256):
        super().__init__()
        if len(x_shape) == 3:  # images
            c, r = x_shape[0], x_shape[-1]
            convs: list[nn.Module] = []
            ch, side = c, r
            for out in (16, 32, 64):
                if side < 4:
                    break
                convs += [nn.Conv2d(ch, out, 4, 2, 1), nn.LeakyReLU(0.2)]
                ch, side = out, side // 2
            self.a = nn.Sequential(*convs, nn.Flatten(), nn.Linear(ch * side * side, hidden))
        else:
            self.a = _mlp(x_shape[0], hidden, hidden, layers=1)
        self.b = _mlp(y_dim, hidden, hidden, layers=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def pairs(self, ex: Tensor, ey: Tensor) -> Tensor:
        return self.head(torch.cat([ex, ey], 1)).squeeze(1)


def _decay(opt: torch.optim.Optimizer, steps: int, final: float):
    # "a decaying learning rate schedule ... reduced variance in estimates" (sec. 4.2):
    # exponential from lr to final * lr over the run.
    gamma = final ** (1.0 / max(1, steps))
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma)


def _maximize(T: nn.Module, batch_bound: Callable[[], Tensor], steps: int, lr: float, final_lr: float,
              average_last: int) -> list[float]:
    """Adam ascent on a DV bound with a decaying lr (MINE and NDM alike); returns the
    training-batch bounds of the last `average_last` steps (default a tenth)."""
    opt = torch.optim.Adam(T.parameters(), lr=lr)
    sched = _decay(opt, steps, final_lr)
    average_last = average_last or max(1, steps // 10)
    tail = []
    for step in range(steps):
        bound = batch_bound()
        opt.zero_grad(set_to_none=True)
        (-bound).backward()
        opt.step()
        sched.step()
        if step >= steps - average_last:
            tail.append(float(bound.detach()))
    return tail


def _as_input(x: Tensor) -> Tensor:
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()


def mine_estimate(x: Tensor, y: Tensor, x_test: Tensor | None = None, y_test: Tensor | None = None,
                  steps: int = 3000, batch_size: int = 256, lr: float = 1e-3, final_lr: float = 0.01,
                  hidden: int = 256, eval_shuffles: int = 10, average_last: int = 0, seed: int = 0,
                  device: str | torch.device = "cpu") -> float:
    """MINE (Belghazi et al. 2018): maximize the DV bound E_J[T] - log E_M[e^T] over a
    statistics network T(x, y) with Adam and an exponentially decaying lr; marginal samples
    pair x_i with y of a shuffled batch. x: images [N, C, H, W] (uint8 or [-1, 1]) or
    vectors [N, Dx]; y: [N, Dy] (standardized with the training statistics: an invertible
    per-dimension map, which leaves I(X; Y) unchanged and eases optimization).

    Returns the DV bound (nats) of the trained T on (x_test, y_test): the joint term over
    every test pair and the marginal term over `eval_shuffles` random pairings of the whole
    test set. With no test data, the mean of the training-batch bounds over the last
    `average_last` steps (default a tenth) is returned instead.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    y = y.float().flatten(1)
    mu, sd = y.mean(0), y.std(0).clamp_min(1e-6)
    yn = ((y - mu) / sd)
    T = MineStatistics(tuple(x.shape[1:]), y.shape[1], hidden).to(device)
    n = len(x)
    batch_size = min(batch_size, n)

    def batch_bound() -> Tensor:
        idx = torch.randint(0, n, (batch_size,), generator=g)
        xb, yb = _as_input(x[idx]).to(device), yn[idx].to(device)
        ex, ey = T.a(xb), T.b(yb)
        perm = torch.randperm(batch_size, generator=g).to(device)
        return dv_bound(T.pairs(ex, ey), T.pairs(ex, ey[perm]))

    tail = _maximize(T, batch_bound, steps, lr, final_lr, average_last)
    if x_test is None:
        return float(np.mean(tail))
    yt = (y_test.float().flatten(1) - mu) / sd
    return _dv_on_heldout(lambda xb: T.a(_as_input(xb).to(device)), lambda yb: T.b(yb.to(device)), T.pairs,
                          x_test, yt, eval_shuffles, g)


@torch.no_grad()
def _dv_on_heldout(embed_x, embed_y, pairs, x: Tensor, y: Tensor, shuffles: int, g: torch.Generator,
                   chunk: int = 1024) -> float:
    """DV bound of a trained critic on held-out pairs: joint = all (x_i, y_i), marginal =
    `shuffles` random pairings (x_i, y_pi(i)) of the whole set."""
    ex = torch.cat([embed_x(x[s:s + chunk]) for s in range(0, len(x), chunk)])
    ey = torch.cat([embed_y(y[s:s + chunk]) for s in range(0, len(y), chunk)])
    t_joint = pairs(ex, ey)
    t_marg = torch.cat([pairs(ex, ey[torch.randperm(len(ey), generator=g).to(ey.device)]) for _ in range(shuffles)])
    return float(dv_bound(t_joint, t_marg))


def shuffle_dims(y: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each column of y [N, D] permuted independently along the batch: samples of the
    product of y's marginals (Fig. 11)."""
    n, d = y.shape
    idx = torch.rand(n, d, generator=generator).argsort(0).to(y.device)  # an independent permutation per column
    return torch.gather(y, 0, idx)


def ndm(y: Tensor, y_test: Tensor | None = None, sigmoid: bool = False, steps: int = 3000,
        batch_size: int = 256, lr: float = 3e-4, final_lr: float = 0.1, hidden: int = 256,
        eval_shuffles: int = 10, average_last: int = 0, seed: int = 0,
        device: str | torch.device = "cpu") -> float:
    """Neural dependency measure (sec. 4.1, Fig. 11): a discriminator T(y) trained with the
    DV bound E_Y[T] - log E_{Y~}[e^T], where Y~ is the batch with every dimension shuffled
    independently across the batch; the bound estimates KL(P_Y || prod_d P_Yd), the total
    correlation: 0 for independent dimensions, larger the more dependent they are. (For
    Gaussian y it is -1/2 log det of the correlation matrix; the tests check it.)

    y is taken as is (no standardization), optionally through a sigmoid first: Table 3
    reports DIM's NDM both ways, because the estimate depends on the scale of its input.
    Returns the bound (nats) on y_test with `eval_shuffles` whole-set shufflings (or, with
    no test data, the mean training-batch bound over the last `average_last` steps).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    f = torch.sigmoid if sigmoid else (lambda t: t)
    y = f(y.float().flatten(1))
    n, d = y.shape
    batch_size = min(batch_size, n)
    T = _mlp(d, hidden, 1).to(device)

    def batch_bound() -> Tensor:
        yb = y[torch.randint(0, n, (batch_size,), generator=g)]
        ys = shuffle_dims(yb, g)
        return dv_bound(T(yb.to(device)), T(ys.to(device)))

    tail = _maximize(T, batch_bound, steps, lr, final_lr, average_last)
    if y_test is None:
        return float(np.mean(tail))
    yt = f(y_test.float().flatten(1)).to(device)
    with torch.no_grad():
        t_joint = T(yt)
        t_marg = torch.cat([T(shuffle_dims(yt, g)) for _ in range(eval_shuffles)])
        return float(dv_bound(t_joint, t_marg))


# ---------------------------------------------------------------------------- nearest neighbours


def nearest_neighbours(queries: Tensor, keys: Tensor, k: int, exclude: Tensor | None = None) -> Tensor:
    """Indices [Q, k] of the k keys closest to each query in L1 distance (App. A.3: L1 "to
    reflect the uniform prior"), nearest first; `exclude[q]` (a key index, e.g. the query
    itself) is never returned."""
    d = torch.cdist(queries.float().flatten(1), keys.float().flatten(1), p=1)
    if exclude is not None:
        d[torch.arange(len(queries)), exclude] = float("inf")
    return d.topk(k, dim=1, largest=False).indices
