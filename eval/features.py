"""A small domain classifier as a torch-fidelity feature extractor.

Inception features are the standard for IS/FID/KID on natural images, but they
say little about 8x8 digits upscaled to 32x32, and cannot be downloaded on an
offline machine. For such domains we train a small CNN on the dataset's labels
(`python -m eval.train_features`) and compute the same metrics in its feature
space: FID/KID on the penultimate layer "feat", IS on the class logits.

Numbers in this space are comparable only with numbers from the same weights
file; the cache key of reference statistics includes the file's hash.

Weights file (plain `torch.save`, loadable with weights_only=True):
    {"state_dict": {name: tensor}, "meta": {str: str | int | float}}
meta keys: in_channels, resolution, num_classes, feature_dim, width,
test_accuracy, dataset (name), signature (JSON of arena.data.dataset_signature),
command.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from arena.data import to_float
from arena.registry import ConfigError

EXTRACTOR_NAME = "domain-classifier"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
META_KEYS = ("in_channels", "resolution", "num_classes", "feature_dim", "width")
MAX_RESOLUTION = 4096  # the side the classifier resizes its input to


class DomainClassifier(nn.Module):
    """conv stack -> global average pool ("feat") -> linear without bias ("logits").

    The head has no bias so that torch-fidelity's "logits_unbiased" (the layer IS
    uses by default) equals the classifier's real logits.
    """

    def __init__(self, in_channels: int, resolution: int, num_classes: int, width: int = 16,
                 feature_dim: int = 128):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.num_classes, self.width, self.feature_dim = num_classes, width, feature_dim
        w = width
        # Pool after every conv: at 32 px this is ~4 M multiply-adds an image, so the
        # digits extractor trains in seconds on a CPU.
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4 * w, feature_dim, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(feature_dim, num_classes, bias=False)
        # Multiplies the metric features so their RMS on the training images is 1 (set by
        # eval.train_features). KID's kernel (x.y / d + 1)^3 is evaluated in float32: with
        # raw features of RMS ~3.5 its terms reach ~1e3 and the MMD estimate drowns in
        # rounding error; at unit scale it behaves like with Inception's features.
        self.register_buffer("feat_scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x float [B, in_channels, resolution, resolution] in [-1, 1] -> [B, feature_dim] (unscaled)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 RGB [B, 3, H, W] (torch-fidelity's input) -> the float input it was trained on.

        Scaling mirrors the toolkit's image convention: [0, 255] -> [-1, 1]. A 1-channel
        classifier sees the mean of R, G, B, which is the original gray value for
        gray images repeated to 3 channels.
        """
        x = to_float(x)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False, antialias=True)
        if self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        elif self.in_channels != x.shape[1]:
            raise ValueError(f"classifier expects {self.in_channels} channels, got {x.shape[1]}")
        return x


def save_classifier(model: DomainClassifier, path: str | os.PathLike, meta: dict) -> None:
    """Write {"state_dict", "meta"} atomically; meta values must be str, int or float."""
    meta = {**{k: getattr(model, k) for k in META_KEYS}, **meta}
    for k, v in meta.items():
        if not isinstance(v, (str, int, float)):
            raise TypeError(f"meta[{k!r}] must be str/int/float, got {type(v).__name__}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a new file of this process (never a planted name or link), renamed over `path` whole
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"state_dict": state, "meta": meta}, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_classifier(path: str | os.PathLike) -> tuple[DomainClassifier, dict]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"domain feature extractor weights not found: {path}")
    what = f"{path}: not a weights file written by eval.train_features"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, a pickle of other objects, truncated, unreadable
        raise ConfigError(f"{what} ({_reason(e)})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict) or not isinstance(blob.get("meta"), dict):
        raise ConfigError(f"{what} (it holds no 'state_dict' and 'meta')")
    meta = blob["meta"]
    try:
        sizes = {k: int(meta[k]) for k in META_KEYS}
        if min(sizes.values()) < 1 or sizes["in_channels"] not in (1, 3) or sizes["resolution"] > MAX_RESOLUTION:
            raise ValueError(f"sizes {sizes}")
        with torch.device("meta"):  # shapes only: the file's tensors become the parameters
            model = DomainClassifier(**sizes)
        model.load_state_dict(blob["state_dict"], assign=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{what} (its meta and weights do not describe a classifier: {_reason(e)})") from None
    model.eval().requires_grad_(False)
    return model, meta


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


_HASHES: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (first 16 hex digits), memoized by (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]


def shipped_extractors() -> dict[str, Path]:
    """name -> path of the weights files shipped in eval/weights (e.g. 'digits-32')."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.pt"))}


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity protocol around DomainClassifier.

    Features: "feat" (penultimate, rescaled to unit RMS; FID/KID/PRC), "logits_unbiased" and "logits"
    (identical, since the head has no bias; IS uses "logits_unbiased").
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"feature extractor '{name}' needs feature_extractor_weights_path")
        self.model, self.meta = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits_unbiased", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return False  # too small to gain from it

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand([1, 3, 8, 8]) * 255).to(torch.uint8)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {getattr(x, 'dtype', type(x))} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        h = self.model.features(self.model.prepare(x))
        out = {"feat": h * self.model.feat_scale}
        if "logits" in self.features_list or "logits_unbiased" in self.features_list:
            out["logits"] = out["logits_unbiased"] = self.model.head(h)
        return tuple(out[name].float() for name in self.features_list)


if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EXTRACTOR_NAME, DomainFeatureExtractor)
