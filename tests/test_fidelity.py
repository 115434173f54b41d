"""eval.fidelity / features / train_features / fid_is / sample_grid, with the shipped
digits extractor (never Inception: no network here, and ~0.16 s an image on this CPU)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from arena.config import EvalConfig
from arena.distributed import Processes
from arena.data import DataConfig, build_dataset, dataset_signature, to_uint8
from arena.registry import ConfigError
from eval import fid_is, train_features
from eval.features import DomainFeatureExtractor, load_classifier, save_classifier, shipped_extractors
from eval.fidelity import (
    UInt8Images,
    assemble,
    check_metrics,
    compute_metrics,
    evaluate_generator,
    generate_samples,
    reference_cache_key,
    resolve_features,
)
from eval import samples
from eval.samples import RenderedSamples
from arena.images import save_grid
from eval.safe_fidelity import INCEPTION_FILE
from eval.sample_grid import grid_latents

KID = dict(kid_subsets=20)  # 20 subsets of 1000 instead of 100: the KID tests need trends, not 3 digits


@pytest.fixture(scope="module")
def digits():
    cfg = DataConfig(name="digits", resolution=32)
    return cfg, build_dataset(cfg, "train"), build_dataset(cfg, "test")


@pytest.fixture(scope="module")
def feats():
    return resolve_features("digits-32")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fidelity-cache"))


def noisy(images: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    x = images.float() / 127.5 - 1
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


class LinearGenerator:
    """Test double of a generative objective: a fixed random linear map z -> tanh image."""

    generates = True

    def __init__(self, z_dim: int = 8, channels: int = 1, resolution: int = 16):
        g = torch.Generator().manual_seed(123)
        self.W = torch.randn(z_dim, channels * resolution * resolution, generator=g) / z_dim ** 0.5
        self.shape = (channels, resolution, resolution)
        self.z_dim = z_dim
        self.calls = 0

    def latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=generator)

    def generate(self, z: torch.Tensor, ema: bool = True) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(z @ self.W).reshape(len(z), *self.shape)


def fake_cfg(**eval_kwargs):
    return SimpleNamespace(data=DataConfig(name="digits", resolution=16), eval=EvalConfig(**eval_kwargs),
                           objective=SimpleNamespace(name="linear"))


# ---------------------------------------------------------------------------- metric behaviour


def test_fid_kid_zero_on_itself_and_increase_with_noise(digits, feats, cache):
    cfg, train, _ = digits
    key = reference_cache_key(dataset_signature(cfg, "train"), feats)
    run = lambda fake: compute_metrics(fake, train, metrics=["fid", "kid"], features=feats, cache_key=key,
                                       cache_root=cache, **KID)
    same = run(train.images)
    # Identical feature sets: FID is 0 up to float64 round-off. Tolerance 1e-6 absolute, against
    # trace(cov) ~ 128 (unit-RMS features) and FID ~ 0.08 already at noise 0.1.
    assert abs(same["fid"]) < 1e-6
    # KID's unbiased estimator on overlapping subsets of one set sits slightly below 0 (measured -0.004).
    assert abs(same["kid_mean"]) < 0.01
    levels = [0.1, 0.2, 0.3, 0.4]
    results = [same] + [run(noisy(train.images, s)) for s in levels]
    fids = [r["fid"] for r in results]
    kids = [r["kid_mean"] for r in results]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert all(a < b for a, b in zip(kids, kids[1:])), kids


def test_inception_score_of_the_domain_classifier_on_its_test_split(digits, feats):
    _, _, test = digits
    # One split over all 360 test images: the classes are balanced, predictions confident
    # (measured 9.41 of 10; with 10 splits of 36 images the per-split marginals are
    # uneven and it drops to 8.56).
    out = compute_metrics(test, None, metrics=["isc"], features=feats, isc_splits=1)
    assert set(out) == {"isc_mean", "isc_std"}
    assert 9.0 < out["isc_mean"] <= 10.0


def test_all_metric_keys_and_precision_recall_on_itself(digits, feats, cache):
    _, train, _ = digits
    out = compute_metrics(train, train, metrics=["fid", "isc", "kid", "prc"], features=feats, **KID)
    assert set(out) == {"fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "precision", "recall"}
    assert out["precision"] == 1.0 and out["recall"] == 1.0


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="did you mean 'fid'"):
        check_metrics(["fidd"])


# ---------------------------------------------------------------------------- feature resolution


def test_inception_without_weights_fails_at_once_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("DIM_INCEPTION_WEIGHTS", raising=False)
    where = str(tmp_path / "th" / "hub" / "checkpoints")
    with pytest.raises(ConfigError) as err:
        resolve_features("inception", DataConfig())
    assert INCEPTION_FILE in str(err.value) and where in str(err.value) and "network" in str(err.value)
    # 'auto' on a dataset without a shipped extractor means Inception: the same error
    with pytest.raises(ConfigError, match=INCEPTION_FILE):
        resolve_features("auto", DataConfig(name="cifar10"))
    # a named file that is missing is reported as such
    with pytest.raises(ConfigError, match="nowhere.pth not found"):
        resolve_features("inception", DataConfig(), inception_weights=str(tmp_path / "nowhere.pth"))
    monkeypatch.setenv("DIM_INCEPTION_WEIGHTS", str(tmp_path / "env.pth"))
    with pytest.raises(ConfigError, match="DIM_INCEPTION_WEIGHTS: .*env.pth not found"):
        resolve_features("inception", DataConfig())


def test_auto_picks_the_shipped_digits_extractor_and_rejects_unknown_names(digits):
    auto = resolve_features("auto", DataConfig(name="digits", resolution=16))
    assert Path(auto["feature_extractor_weights_path"]).name == "digits-32.pt"
    assert auto["feature_extractor"] == "domain-classifier"
    with pytest.raises(ConfigError, match="did you mean 'digits-32'"):
        resolve_features("digits-23", DataConfig())


def test_cli_fails_before_generating_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("DIM_INCEPTION_WEIGHTS", raising=False)
    objective = LinearGenerator()
    monkeypatch.setattr(fid_is, "load_run", lambda run, ckpt, device: (fake_cfg(features="inception"), objective, 7))
    code = fid_is.main(["--run", str(tmp_path), "--num-samples", "100", "--device", "cpu"])
    assert code == 2 and INCEPTION_FILE in capsys.readouterr().err
    assert objective.calls == 0 and not (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match=INCEPTION_FILE):
        evaluate_generator(objective, fake_cfg(features="inception"), num_samples=10)
    assert objective.calls == 0


def test_cli_writes_one_json_line(tmp_path, monkeypatch, capsys, cache):
    monkeypatch.setenv("DIM_FIDELITY_CACHE", cache)
    monkeypatch.setattr(fid_is, "load_run", lambda run, ckpt, device: (fake_cfg(), LinearGenerator(), 7))
    code = fid_is.main(["--run", str(tmp_path), "--num-samples", "300", "--metrics", "fid,kid", "--seed", "3",
                        "--device", "cpu", "--inception-weights", str(tmp_path / "w.pth")])
    assert code == 0
    out, err = capsys.readouterr()
    printed = json.loads(out.strip().splitlines()[-1])
    # the run's features are the digits extractor: the Inception file is not used, and it is said
    assert "--inception-weights is not used: the features are digits-32.pt" in err
    written = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert written == [printed]
    assert printed["step"] == 7 and printed["num_samples"] == 300 and printed["seed"] == 3
    assert printed["features"] == "digits-32" and printed["ema"] is True
    assert printed["fid"] > 0 and "kid_mean" in printed and "isc_mean" not in printed


# ---------------------------------------------------------------------------- caching


def test_reference_statistics_are_cached_and_reused(digits, feats, tmp_path, monkeypatch):
    cfg, train, _ = digits
    key = reference_cache_key(dataset_signature(cfg, "train"), feats)
    fake = noisy(train.images[:300], 0.2)
    first = compute_metrics(fake, train, metrics=["fid", "kid"], features=feats, cache_key=key,
                            cache_root=str(tmp_path), **KID)
    assert (tmp_path / f"{key}-domain-classifier-features-feat.pt").is_file()
    assert (tmp_path / f"{key}-domain-classifier-stat-fid-feat.pt").is_file()

    seen = []
    forward = DomainFeatureExtractor.forward
    monkeypatch.setattr(DomainFeatureExtractor, "forward", lambda self, x: seen.append(len(x)) or forward(self, x))
    second = compute_metrics(fake, train, metrics=["fid", "kid"], features=feats, cache_key=key,
                             cache_root=str(tmp_path), **KID)
    assert sum(seen) == len(fake)  # only the fake side went through the extractor
    assert second == first


def test_cache_key_names_the_data_and_the_extractor_weights(tmp_path, feats):
    sig = dataset_signature(DataConfig(name="digits", resolution=32), "train")
    other = tmp_path / "copy.pt"
    model, meta = load_classifier(feats["feature_extractor_weights_path"])
    model.feat_scale.mul_(2)
    save_classifier(model, other, {k: v for k, v in meta.items() if k not in ("in_channels", "resolution")})
    keys = {
        reference_cache_key(sig, feats),
        reference_cache_key({**sig, "resolution": 16}, feats),
        reference_cache_key({**sig, "split": "test"}, feats),
        reference_cache_key(sig, resolve_features(str(other))),
        reference_cache_key(sig, feats, limit=1000),
    }
    assert len(keys) == 5
    assert reference_cache_key(sig, feats).startswith("digits-train-32px-")


# ---------------------------------------------------------------------------- sampling


def test_sharded_generation_matches_one_process():
    G = LinearGenerator()
    n = 37  # not divisible by 2 or 3
    one = generate_samples(G.generate, G.latent, n, seed=5, batch_size=10)
    assert one.shape == (n, 1, 16, 16) and one.dtype == torch.uint8
    for world, batch in ((2, 7), (3, 4)):
        shards = [generate_samples(G.generate, G.latent, n, seed=5, batch_size=batch, rank=r, world_size=world)
                  for r in range(world)]
        assert [len(s) for s in shards] == [len(range(r, n, world)) for r in range(world)]
        assert torch.equal(assemble(shards, n, world), one)
    assert not torch.equal(generate_samples(G.generate, G.latent, n, seed=6), one)
    rendered = RenderedSamples(G.generate, G.latent, n, seed=5, batch_size=8)  # what one process hands on
    expected, calls = UInt8Images(one), G.calls
    assert all(torch.equal(rendered[i], expected[i]) for i in range(n))
    assert G.calls - calls == 5 and len(rendered.images) == 37 - 32  # each batch once; one batch held


def test_latents_are_drawn_in_chunks_of_one_seeded_stream(monkeypatch):
    """Any n: the latents are drawn LATENT_CHUNK at a time (never all n at once) from one
    seeded generator; shards, batches that cross a chunk and a step back all see the same."""
    monkeypatch.setattr(samples, "LATENT_CHUNK", 10)
    G = LinearGenerator()
    drawn = []
    latent = lambda k, g: drawn.append(k) or G.latent(k, g)  # noqa: E731
    n = 37
    g = torch.Generator().manual_seed(5)
    expected = torch.cat([G.latent(k, g) for k in (10, 10, 10, 7)])
    stream = samples.LatentStream(latent, n, seed=5)
    assert torch.equal(stream.rows(torch.arange(n)), expected) and max(drawn) == 10
    assert torch.equal(stream.rows(torch.tensor([3, 25])), expected[[3, 25]])  # back to the start: drawn again
    one = generate_samples(G.generate, latent, n, seed=5, batch_size=7)
    assert torch.equal(one, to_uint8(G.generate(expected)))
    shards = [generate_samples(G.generate, latent, n, seed=5, batch_size=6, rank=r, world_size=3) for r in range(3)]
    assert torch.equal(assemble(shards, n, 3), one)
    rendered = RenderedSamples(G.generate, latent, n, seed=5, batch_size=8)
    order = [36, 0, 35, *range(n)]
    assert all(torch.equal(rendered[i], UInt8Images(one)[i]) for i in order)
    assert max(drawn) == 10


def simulated_processes(world: int, shards: dict) -> list[Processes]:
    """Processes in one program: rank r's gather hands its shard to rank 0, which gets all
    of them in rank order (the higher ranks call evaluate_generator first)."""
    class Simulated(Processes):
        def gather(self, x):
            shards[self.rank] = x
            return torch.cat([shards[r] for r in range(world)]) if self.rank == 0 else x

    return [Simulated(r, world, torch.device("cpu"), r == 0) for r in range(world)]


def test_evaluate_generator_two_simulated_processes_equal_one(tmp_path):
    cfg = fake_cfg(metrics=["fid", "kid"], num_samples=101)
    G = LinearGenerator()
    kw = dict(seed=2, batch_size=16, cache_root=str(tmp_path))
    single = evaluate_generator(G, cfg, **kw)
    for world in (2, 3):
        shards = {}
        procs = simulated_processes(world, shards)
        for p in reversed(procs[1:]):
            assert evaluate_generator(G, cfg, procs=p, **kw) is None
        assert evaluate_generator(G, cfg, procs=procs[0], **kw) == single and single["fid"] > 0


# ---------------------------------------------------------------------------- images and grids


def test_uint8_images_round_trip_and_rgb(digits):
    _, train, _ = digits
    direct = UInt8Images(train)
    via_float = UInt8Images(torch.stack([train[i][0] for i in range(5)]))
    for i in range(5):
        assert direct[i].shape == (3, 32, 32) and direct[i].dtype == torch.uint8
        assert torch.equal(direct[i], via_float[i])
        assert torch.equal(direct[i][0], train.images[i][0]) and torch.equal(direct[i][1], direct[i][2])
    assert torch.equal(to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])), torch.tensor([0, 128, 255, 255]).byte())


def test_grid_png_is_reproducible_and_interpolates_between_seeded_latents(tmp_path):
    G = LinearGenerator()
    a = save_grid(G.generate(grid_latents(G.latent, 16, 4, seed=0)), tmp_path / "a.png", nrow=4)
    b = save_grid(G.generate(grid_latents(G.latent, 16, 4, seed=0)), tmp_path / "b.png", nrow=4)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp files left
    ends = G.latent(8, torch.Generator().manual_seed(0))
    for mode in ("lerp", "slerp"):
        z = grid_latents(G.latent, 16, 4, seed=0, interpolate=True, mode=mode).reshape(4, 4, -1)
        assert torch.allclose(z[:, 0], ends[:4], atol=1e-6) and torch.allclose(z[:, -1], ends[4:], atol=1e-6)
    z = grid_latents(G.latent, 16, 4, seed=0, interpolate=True, mode="lerp").reshape(4, 4, -1)
    assert torch.allclose(z[:, 1], (2 * ends[:4] + ends[4:]) / 3, atol=1e-6)


# ---------------------------------------------------------------------------- the extractor


def test_shipped_digits_extractor(digits):
    cfg, _, test = digits
    path = shipped_extractors()["digits-32"]
    assert path.stat().st_size < 1_000_000
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, (str, int, float)) for v in blob["meta"].values())
    model, meta = load_classifier(path)
    acc = train_features.accuracy(model, test, cfg, "cpu")
    assert acc >= 0.95 and acc == pytest.approx(meta["test_accuracy"], abs=1e-6)
    assert json.loads(meta["signature"]) == dataset_signature(cfg, "train")


def test_train_features_cli_writes_a_loadable_extractor(tmp_path, capsys):
    out = tmp_path / "d16.pt"
    assert train_features.main(["--data", "digits", "data.resolution=16", "--epochs", "3", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, meta = load_classifier(out)
    assert meta["resolution"] == 16 and meta["in_channels"] == 1 and meta["test_accuracy"] == report["test_accuracy"]
    assert report["test_accuracy"] > 0.5  # 3 epochs; the shipped 20-epoch extractor reaches 0.997
    assert train_features.main(["--data", "digits", "train.steps=3", "--out", str(tmp_path / "x.pt")]) == 2
    assert "only data.key=value" in capsys.readouterr().err
