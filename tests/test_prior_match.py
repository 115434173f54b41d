"""The shipped prior_match_digits config makes an encoder's outputs match the prior."""
import torch
from scipy.stats import ks_2samp

from arena.data import build_dataset
from arena.objective import build_objective, data_info
from arena.prior import sample_prior
from arena.trainer import train
from tests.helpers import tiny


def ks_pvalues(objective, cfg, x):
    objective.nets.eval()
    with torch.no_grad():  # on the objective's device: train() returns it on the GPU where there is one
        y = objective.encode(x.to(next(objective.nets.parameters()).device)).cpu()
    v = sample_prior(cfg.objective.prior, len(x), y.shape[1], generator=torch.Generator().manual_seed(0))
    return [ks_2samp(y[:, d].numpy(), v[:, d].numpy()).pvalue for d in range(y.shape[1])]


def test_prior_match_digits_passes_a_two_sample_test_the_untrained_encoder_fails(tmp_path):
    cfg = tiny("prior_match_digits", tmp_path)
    test = build_dataset(cfg.data, "test")
    x = test.images.float() / 127.5 - 1

    torch.manual_seed(cfg.run.seed)
    untrained = build_objective(cfg, data_info(test))
    assert max(ks_pvalues(untrained, cfg, x)) < 1e-6  # every dimension is clearly not U[0, 1]

    trained = train(cfg)
    p = ks_pvalues(trained, cfg, x)
    # Two-sample Kolmogorov-Smirnov per dimension, 360 test images against 360 prior
    # samples: most dimensions are indistinguishable from the prior at the 1% level.
    assert sum(v > 0.01 for v in p) >= 6, p
