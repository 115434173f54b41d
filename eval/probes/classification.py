"""What a representation tells apart: classifiers on it (Table 3 "SVM", Tables 1-2 MLP,
Table 2 "SS" fine-tuning) and its nearest neighbours (App. A.3).

Accuracies are in percent. Labels are a LongTensor [N] of classes, or [N, K] of 0/1
attributes (CelebA): then accuracy is per attribute and reported as its mean, min and
max over attributes (Fig. 10).
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arena.distributed import local_batchnorm
from dim.heads import MLPHead

from .fit import fit, minibatches, seeded, standardizer

# ---------------------------------------------------------------------------- results


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
    g = seeded(seed)
    device = torch.device(device)
    xtr, ytr = train_feats.float().flatten(1), train_labels.long()
    xte, yte = test_feats.float().flatten(1).to(device), test_labels.long().to(device)
    # Standardize with train statistics (the official probe feeds raw features to a BN'd head; the
    # first Linear sees them unnormalized, which makes lr 1e-4 depend on the feature scale).
    standardize = standardizer(xtr)
    xtr, xte = standardize(xtr).to(device), standardize(xte)
    ytr = ytr.to(device)
    head = MLPHead(xtr.shape[1], _num_outputs(ytr, num_classes), hidden, dropout).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(epochs), 0.1)
    average_last = average_last or max(1, epochs // 10)
    history = []

    def batches():
        head.train()
        for idx in minibatches(len(xtr), batch_size, g):
            idx = idx.to(device)
            yield xtr[idx], ytr[idx]

    def after_epoch(epoch: int, _) -> None:
        if epoch >= epochs - average_last:
            history.append(_evaluate_head(head, xte, yte, batch_size=1024))

    fit(opt, sched, epochs, batches, lambda b: _classification_loss(head(b[0]), b[1]), after_epoch)
    return _accuracy_result(torch.stack(history).mean(0))


@torch.no_grad()
def _evaluate_head(head: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    head.eval()
    correct = 0
    for s in range(0, len(x), batch_size):
        correct = correct + _correct(head(x[s:s + batch_size]), y[s:s + batch_size])
    return correct / len(x) * 100.0


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
    # fine-tuned by this process alone (the probes run on the main one): no cross-process batch norm
    enc = local_batchnorm(copy.deepcopy(encoder)).to(device).requires_grad_(True)
    x0, y0 = next(iter(test_batches))
    with torch.no_grad():
        enc.eval()
        n_in = enc(x0[:2].to(device))[tap].flatten(1).shape[1]
    head = MLPHead(n_in, num_outputs).to(device)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(epochs), 0.1)

    def batches():
        enc.train()
        head.train()
        for x, y in train_batches:
            if len(x) >= 2:  # BatchNorm needs two samples
                yield x.to(device), y.to(device)

    def after_epoch(epoch: int, mean_loss: Tensor) -> None:
        if log is not None:
            log(f"semi epoch {epoch + 1}/{epochs}: train loss {float(mean_loss):.4f}")

    fit(opt, sched, epochs, batches, lambda b: _classification_loss(head(enc(b[0])[tap]), b[1]), after_epoch)
    enc.eval()
    head.eval()
    correct, n = 0, 0
    with torch.no_grad():
        for x, y in test_batches:
            x, y = x.to(device), y.to(device)
            correct = correct + _correct(head(enc(x)[tap]), y)
            n += len(x)
    return _accuracy_result(correct / n * 100.0)


# ---------------------------------------------------------------------------- nearest neighbours


def nearest_neighbours(queries: Tensor, keys: Tensor, k: int, exclude: Tensor | None = None) -> Tensor:
    """Indices [Q, k] of the k keys closest to each query in L1 distance (App. A.3: L1 "to
    reflect the uniform prior"), nearest first; `exclude[q]` (a key index, e.g. the query
    itself) is never returned."""
    d = torch.cdist(queries.float().flatten(1), keys.float().flatten(1), p=1)
    if exclude is not None:
        d[torch.arange(len(queries)), exclude] = float("inf")
    return d.topk(k, dim=1, largest=False).indices
