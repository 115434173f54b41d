"""What a representation keeps of the image: a decoder trained from the frozen code, scored
by MS-SSIM between its reconstructions and the test images (Table 3 "MS-SSIM")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from arena.data import to_float
from dim.decoder import Decoder

from .fit import fit, minibatches, seeded, standardizer

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
        data_range=(-1.0, 1.0), normalize="relu", reduction="elementwise_mean",
        sync_on_compute=False)  # every caller measures on one process: a gather would wait for the others


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


def msssim_probe(train_codes: Tensor, train_images: Tensor, test_codes: Tensor, test_images: Tensor,
                 epochs: int = 30, batch_size: int = 64, lr: float = 1e-3, width: int = 64, seed: int = 0,
                 device: str | torch.device = "cpu") -> float:
    """Train a decoder from the frozen codes with the L2 loss on TRAIN; MS-SSIM of its
    reconstructions of the TEST images. Images: uint8 or float in [-1, 1], [N, C, R, R]."""
    g = seeded(seed)
    device = torch.device(device)
    ctr, cte = train_codes.float().flatten(1), test_codes.float().flatten(1)
    standardize = standardizer(ctr)
    ctr, cte = standardize(ctr).to(device), standardize(cte).to(device)
    c, r = train_images.shape[1], train_images.shape[-1]
    dec = Decoder(ctr.shape[1], c, r, width).to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))

    def batches():
        dec.train()
        for idx in minibatches(len(ctr), batch_size, g):
            yield ctr[idx.to(device)], to_float(train_images[idx]).to(device)

    fit(opt, sched, epochs, batches, lambda b: F.mse_loss(dec(b[0]), b[1]))  # the L2 reconstruction loss
    dec.eval()
    metric = msssim_metric(r).to(device)
    with torch.no_grad():
        for s in range(0, len(cte), 256):
            metric.update(dec(cte[s:s + 256]), to_float(test_images[s:s + 256]).to(device))
    return float(metric.compute())
