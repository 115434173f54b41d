"""The paper's remaining figures: JSD with fewer negatives (Fig. 8), the figure commands'
selection and math on tiny inputs, and one tiny end-to-end run of each command."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arena.config import load_config
from arena.objective import DataInfo, build_objective
from dim.estimators import jsd_mi


def test_jsd_with_fewer_negatives_by_hand():
    """N = 3 images, L = 1, m = 1: image i's one negative is image i+1 (mod 3), so
    E_neg = mean(sp(s01), sp(s12), sp(s20)) and the estimate is
    mean_i(log 2 - sp(-s_ii)) - E_neg + log 2."""
    s = torch.tensor([[1.0, 2.0, -3.0],
                      [0.5, -1.0, 4.0],
                      [-2.0, 7.0, 3.0]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731 - softplus
    e_pos = sum(math.log(2) - sp(-s[i, i].item()) for i in range(3)) / 3
    e_neg = (sp(2.0) + sp(4.0) + sp(-2.0)) / 3 - math.log(2)
    assert jsd_mi(s, max_negatives=1).item() == pytest.approx(e_pos - e_neg, abs=1e-6)
    # all negatives (m = N - 1 = 2) is the plain estimate over the 6 off-diagonal entries
    e_all = (sp(2.0) + sp(-3.0) + sp(0.5) + sp(4.0) + sp(-2.0) + sp(7.0)) / 6 - math.log(2)
    assert jsd_mi(s, max_negatives=2).item() == pytest.approx(e_pos - e_all, abs=1e-6)
    assert jsd_mi(s).item() == pytest.approx(e_pos - e_all, abs=1e-6)


def test_jsd_fewer_negatives_reads_only_the_chosen_images():
    """Unchosen negatives (huge scores) do not change the estimate; every location of a
    chosen image does."""
    n, l, m = 6, 4, 2
    s = torch.full((n, n, l), 50.0)
    for i in range(n):
        s[i, i] = 1.0
        for k in range(1, m + 1):
            s[i, (i + k) % n] = -1.0
    expected = (math.log(2) - F.softplus(torch.tensor(-1.0))) - (F.softplus(torch.tensor(-1.0)) - math.log(2))
    assert jsd_mi(s, max_negatives=m).item() == pytest.approx(expected.item(), abs=1e-6)
    s[0, 1, 3] = 2.0  # a location of a chosen negative moves the estimate
    assert jsd_mi(s, max_negatives=m).item() < expected.item()
    with pytest.raises(ValueError, match="max_negatives"):
        jsd_mi(s, max_negatives=0)


def test_random_negative_subset_is_drawn_from_the_generator():
    s = torch.randn(8, 8, 3)
    a = jsd_mi(s, max_negatives=3, generator=torch.Generator().manual_seed(1))
    b = jsd_mi(s, max_negatives=3, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item() and torch.isfinite(a)


def test_dim_objective_passes_max_negatives_to_jsd():
    cfg = load_config("dim_l_digits", ["objective.estimator=jsd", "objective.max_negatives=2", "objective.gamma=0",
                                       "model.mi_units=64"])
    objective = build_objective(cfg, DataInfo(channels=1, resolution=16, num_classes=10))
    s = torch.randn(8, 8, 16)
    assert objective.mi(s).item() == pytest.approx(jsd_mi(s, max_negatives=2).item(), abs=1e-6)
    assert objective.mi(s).item() != pytest.approx(jsd_mi(s).item(), abs=1e-6)
