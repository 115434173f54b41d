"""Representation probes of the DIM paper (sec. 4.1, Tables 1-3, App. A.3-A.5).

Pure functions on tensors, so tests can run them on synthetic features; the CLIs
(`eval.dim_probes`, `eval.neighbours`, `eval.ablation`) feed them a trained run.

    classification   svm_probe, mlp_probe, semi_probe, nearest_neighbours   (Tables 1-3, App. A.3)
    reconstruction   msssim_probe: decoder from the frozen code, MS-SSIM     (Table 3 "MS-SSIM")
    information      mine_estimate, ndm: Donsker-Varadhan bounds             (Table 3 "I(X, Y)", "NDM")
    fit              what they share: seeding, standardization, minibatches, the training loop

Every probe is trained on the TRAIN split and reports on the TEST split (never a split
of train reported as test, the bug REFERENCES.md lists).
"""
from .classification import mlp_probe, nearest_neighbours, semi_probe, svm_probe
from .fit import ImageBatches, fit
from .information import MineStatistics, dv_bound, mine_estimate, ndm, shuffle_dims
from .reconstruction import Decoder, msssim, msssim_metric, msssim_probe, msssim_scales, msssim_settings

__all__ = [
    "Decoder", "ImageBatches", "MineStatistics", "dv_bound", "fit", "mine_estimate", "mlp_probe", "msssim",
    "msssim_metric", "msssim_probe", "msssim_scales", "msssim_settings", "ndm", "nearest_neighbours",
    "semi_probe", "shuffle_dims", "svm_probe",
]
