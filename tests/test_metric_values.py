"""FID, KID and IS from eval.fidelity.compute_metrics against independent numpy/scipy
computations on fixed features.

A test feature extractor, registered with torch-fidelity for these tests only, makes the
features a known function of the pixels (the 12 values of a 3x2x2 image in [0, 1]), so the
reference numbers need nothing but the images."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from eval.fidelity import compute_metrics

NAME = "test-pixels"
CLASSES = 5


def pixel_features(x: np.ndarray) -> np.ndarray:
    """uint8 [N, 3, 2, 2] -> float64 [N, 12]: the 'feat' layer of the test extractor. Unit
    scale, as torch-fidelity evaluates KID's cubic kernel in float32."""
    return x.reshape(len(x), -1).astype(np.float64) / 255.0


def pixel_logits(x: np.ndarray) -> np.ndarray:
    return pixel_features(x)[:, :CLASSES] * 6.0


class PixelFeatures(FeatureExtractorBase):
    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 2, 2, dtype=torch.uint8)

    def forward(self, x):
        feat = x.flatten(1).float() / 255.0
        out = {"feat": feat, "logits_unbiased": feat[:, :CLASSES] * 6.0}
        return tuple(out[k] for k in self.features_list)


@pytest.fixture
def features(monkeypatch):
    monkeypatch.setitem(FEATURE_EXTRACTORS_REGISTRY, NAME, PixelFeatures)
    return {"feature_extractor": NAME}


def images(n: int, seed: int, high: int = 256, shift: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    return torch.from_numpy((g.integers(0, high, (n, 3, 2, 2)) + shift).clip(0, 255).astype(np.uint8))


def fid_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with tr (S_a S_b)^(1/2) as the sum
    of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2) (a symmetric matrix)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = scipy.linalg.sqrtm(s_a).real
    eig = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(eig.clip(0)).sum())


def kid_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3 over the whole sets."""
    m, d = a.shape
    k = lambda x, y: (x @ y.T / d + 1) ** 3
    k_aa, k_bb, k_ab = k(a, a), k(b, b), k(a, b)
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within - 2 * k_ab.mean())


def test_fid_and_kid_equal_the_formulas_on_fixed_features(features):
    fake, real = images(300, 1, high=160), images(300, 2)
    out = compute_metrics(fake, real, metrics=["fid", "kid"], features=features, kid_subsets=1)
    a, b = pixel_features(fake.numpy()), pixel_features(real.numpy())
    assert out["fid"] == pytest.approx(fid_by_hand(a, b), rel=1e-5)
    # one subset as large as both sets: KID is the whole sets' MMD^2 (any order of the samples)
    assert out["kid_mean"] == pytest.approx(kid_by_hand(a, b), rel=1e-4)
    assert out["kid_std"] == 0.0
    assert out["fid"] > 0.1 and out["kid_mean"] > 1e-3  # different distributions
    same = compute_metrics(real, real, metrics=["fid"], features=features)
    assert abs(same["fid"]) < 1e-6


def test_inception_score_equals_the_formula_on_fixed_logits(features):
    """IS = exp(E_x KL(p(y|x) || p(y))), p(y|x) = softmax(logits), p(y) its mean over x."""
    x = images(200, 3)
    out = compute_metrics(x, None, metrics=["isc"], features=features, isc_splits=1)
    logits = pixel_logits(x.numpy())
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    marginal = p.mean(0)
    expected = np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean())
    assert out["isc_mean"] == pytest.approx(float(expected), rel=1e-6)
    assert out["isc_std"] == 0.0
    assert 1.0 < out["isc_mean"] < CLASSES
