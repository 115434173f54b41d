"""Files torch-fidelity would unpickle (Inception weights, its metric cache) are verified first.

torch-fidelity 0.4 loads both with torch.load(weights_only=False): a crafted file runs code.
Here the crafted file creates a marker file when unpickled; it must never be created.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import torch

from arena.data import DataConfig, build_dataset, dataset_signature
from arena.registry import ConfigError
from eval import safe_fidelity
from eval.fidelity import compute_metrics, reference_cache_key, resolve_features
from eval.safe_fidelity import INCEPTION_FILE


class RunsCode:
    """Unpickling this object opens (creates) `marker` for writing."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv.weight": torch.zeros(2), "x": RunsCode(marker)}, path)
    return path


def sha_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def plain_state(path: Path) -> Path:
    """A harmless stand-in for the Inception weights: a state dict of tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv.weight": torch.ones(2, 2), "fc.bias": torch.zeros(3)}, path)
    return path


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("DIM_INCEPTION_WEIGHTS", raising=False)
    return tmp_path / "th" / "hub" / "checkpoints"


def test_the_crafted_file_does_run_code_when_unpickled(tmp_path):
    """The test double works: a plain torch.load of it creates the marker."""
    marker = tmp_path / "ran"
    torch.load(crafted(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_crafted_inception_weights_are_refused_and_never_run(tmp_path, no_hub, monkeypatch):
    marker = tmp_path / "ran"
    evil = crafted(tmp_path / INCEPTION_FILE, marker)
    # 1) not the known file: its sha256 does not begin with the prefix in the file's name
    with pytest.raises(ConfigError, match=f"is not {INCEPTION_FILE}: its sha256 begins {sha_prefix(evil)}"):
        resolve_features("inception", DataConfig(), inception_weights=str(evil))
    # 2) an 8-digit prefix can be matched by brute force: the weights-only load still refuses it
    monkeypatch.setattr(safe_fidelity, "INCEPTION_SHA256", sha_prefix(evil))
    with pytest.raises(ConfigError, match="refusing to hand this file to torch-fidelity"):
        resolve_features("inception", DataConfig(), inception_weights=str(evil))
    # 3) nor through $DIM_INCEPTION_WEIGHTS, the hub cache, or a features dict given to compute_metrics
    monkeypatch.setenv("DIM_INCEPTION_WEIGHTS", str(evil))
    with pytest.raises(ConfigError, match="refusing"):
        resolve_features("inception")
    monkeypatch.delenv("DIM_INCEPTION_WEIGHTS")
    crafted(no_hub / INCEPTION_FILE, marker)
    with pytest.raises(ConfigError, match="refusing"):
        resolve_features("inception")
    images = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="refusing"):
        compute_metrics(images, None, metrics=["isc"], features={
            "feature_extractor": "inception-v3-compat", "feature_extractor_weights_path": str(evil)})
    assert not marker.exists()


def test_planted_metric_cache_file_is_refused_and_never_runs(tmp_path):
    cfg = DataConfig(name="digits", resolution=32)
    train = build_dataset(cfg, "train")
    feats = resolve_features("digits-32")
    key = reference_cache_key(dataset_signature(cfg, "train"), feats)
    marker = tmp_path / "ran"
    planted = crafted(tmp_path / "cache" / f"{key}-domain-classifier-stat-fid-feat.pt", marker)
    with pytest.raises(ConfigError, match=f"metric cache file {planted} is not plain tensors or arrays.*Delete it"):
        compute_metrics(train.images[:50], train, metrics=["fid"], features=feats, cache_key=key,
                        cache_root=str(tmp_path / "cache"))
    assert not marker.exists()
    planted.unlink()  # once removed, the statistics are recomputed, cached, and the cache reads back verified
    first = compute_metrics(train.images[:50], train, metrics=["fid"], features=feats, cache_key=key,
                            cache_root=str(tmp_path / "cache"))
    assert planted.is_file()
    safe_fidelity._VERIFIED.clear()
    assert compute_metrics(train.images[:50], train, metrics=["fid"], features=feats, cache_key=key,
                           cache_root=str(tmp_path / "cache")) == first


# ---------------------------------------------------------------------------- fetching Inception


def test_inception_weights_in_torch_hub_cache_are_verified_and_used(no_hub, monkeypatch):
    path = plain_state(no_hub / INCEPTION_FILE)
    monkeypatch.setattr(safe_fidelity, "INCEPTION_SHA256", sha_prefix(path))
    assert resolve_features("inception") == {"feature_extractor": "inception-v3-compat",
                                             "feature_extractor_weights_path": str(path)}


def test_inception_weights_are_fetched_on_first_use_and_verified(tmp_path, no_hub, monkeypatch):
    """With a network, the weights come from torch-fidelity's release URL into torch hub's
    cache (as torch-fidelity itself would); the download is checked against the known hash."""
    good = plain_state(tmp_path / "served.pth")
    asked = []

    def serve(url, timeout=None):
        asked.append(url)
        return io.BytesIO(good.read_bytes())

    monkeypatch.setattr(safe_fidelity.urllib.request, "urlopen", serve)
    monkeypatch.setattr(safe_fidelity, "INCEPTION_SHA256", sha_prefix(good))
    out = resolve_features("inception")
    assert asked == [safe_fidelity.URL_INCEPTION_V3]
    assert out["feature_extractor_weights_path"] == str(no_hub / INCEPTION_FILE)
    assert (no_hub / INCEPTION_FILE).read_bytes() == good.read_bytes()
    resolve_features("inception")
    assert len(asked) == 1  # fetched once, then found in the cache


def test_a_fetched_file_with_the_wrong_hash_is_not_kept(tmp_path, no_hub, monkeypatch):
    marker = tmp_path / "ran"
    evil = crafted(tmp_path / "served.pth", marker)
    monkeypatch.setattr(safe_fidelity.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(evil.read_bytes()))
    with pytest.raises(ConfigError, match=f"fetching it failed \\(ValueError: the downloaded file's sha256 begins "
                                          f"{sha_prefix(evil)}, not {safe_fidelity.INCEPTION_SHA256}\\)"):
        resolve_features("inception")
    assert not no_hub.exists() or list(no_hub.iterdir()) == []  # no half or foreign file left behind
    assert not marker.exists()


def test_a_failed_fetch_names_the_file_and_where_to_put_it(no_hub):
    """Offline (the suite blocks the network, see conftest): the fetch fails, and the message
    says which file is needed, where to put it and how to point at a copy."""
    with pytest.raises(ConfigError) as err:
        resolve_features("inception", DataConfig())
    message = str(err.value)
    assert f"{INCEPTION_FILE} not found in {no_hub}, and fetching it failed (URLError" in message
    assert f"copy the file to {no_hub / INCEPTION_FILE}" in message and "--inception-weights" in message


# ---------------------------------------------------------------------------- time of check = time of use


def spy_on_torch_fidelity(monkeypatch, seen: list, call_through: bool = True):
    """Record what torch-fidelity is handed (and the files' bytes and modes at that moment)."""
    real = safe_fidelity.torch_fidelity.calculate_metrics

    def spy(**kwargs):
        record = dict(kwargs)
        for key in ("feature_extractor_weights_path",):
            if kwargs.get(key):
                path = Path(kwargs[key])
                record[key + " bytes"] = path.read_bytes()
                record[key + " mode"] = path.stat().st_mode & 0o777
        if kwargs.get("cache_root"):
            record["cache files"] = sorted(p.name for p in Path(kwargs["cache_root"]).glob("*.pt"))
        seen.append(record)
        return real(**kwargs) if call_through else {"inception_score_mean": 1.0, "inception_score_std": 0.0}

    monkeypatch.setattr(safe_fidelity.torch_fidelity, "calculate_metrics", spy)


def test_torch_fidelity_gets_a_private_copy_of_the_verified_inception_bytes(tmp_path, monkeypatch):
    weights = plain_state(tmp_path / INCEPTION_FILE)
    verified = weights.read_bytes()
    monkeypatch.setattr(safe_fidelity, "INCEPTION_SHA256", sha_prefix(weights))
    features = resolve_features("inception", DataConfig(), inception_weights=str(weights))
    seen = []
    spy_on_torch_fidelity(monkeypatch, seen, call_through=False)
    images = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    compute_metrics(images, None, metrics=["isc"], features=features)
    handed = Path(seen[0]["feature_extractor_weights_path"])
    assert handed != weights and seen[0]["feature_extractor_weights_path bytes"] == verified
    assert seen[0]["feature_extractor_weights_path mode"] == 0o600 and not handed.exists()  # gone after the call
    # the file swapped after resolve_features checked it (same size and mtime: a memo would pass it)
    marker = tmp_path / "ran"
    st = weights.stat()
    evil = crafted(tmp_path / "evil.pt", marker).read_bytes()
    weights.write_bytes(evil[: st.st_size].ljust(st.st_size, b"\0"))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ConfigError, match=f"{weights} is not {INCEPTION_FILE}: its sha256 begins"):
        compute_metrics(images, None, metrics=["isc"], features=features)
    assert len(seen) == 1 and not marker.exists()


def test_torch_fidelity_reads_verified_private_copies_of_the_metric_cache(tmp_path, monkeypatch):
    cfg = DataConfig(name="digits", resolution=32)
    train = build_dataset(cfg, "train")
    feats = resolve_features("digits-32")
    key = reference_cache_key(dataset_signature(cfg, "train"), feats)
    cache = tmp_path / "cache"
    seen = []
    spy_on_torch_fidelity(monkeypatch, seen)
    first = compute_metrics(train.images[:50], train, metrics=["fid"], features=feats, cache_key=key,
                            cache_root=str(cache))
    written = sorted(p.name for p in cache.glob(f"{key}-*.pt"))
    assert written and Path(seen[0]["cache_root"]) != cache  # torch-fidelity wrote privately; copied back
    second = compute_metrics(train.images[:50], train, metrics=["fid"], features=feats, cache_key=key,
                             cache_root=str(cache))
    assert second == first and seen[1]["cache files"] == written and Path(seen[1]["cache_root"]) != cache
    assert not Path(seen[1]["cache_root"]).exists()


def test_the_declared_torch_fidelity_range_holds_the_tested_version():
    """The fence above relies on torch-fidelity 0.4's loading and cache layout:
    pyproject.toml accepts exactly the releases it was tested with."""
    import re

    import torch_fidelity
    from packaging.specifiers import SpecifierSet

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    (spec,) = re.findall(r'"torch-fidelity([^"]*)"', text)
    assert torch_fidelity.__version__ in SpecifierSet(spec)
    assert "0.3.0" not in SpecifierSet(spec) and "0.5.0" not in SpecifierSet(spec)
