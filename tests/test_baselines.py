"""The paper's comparison models (dim.baselines: vae, aae, bigan): configs, one step per
objective at tiny width, the losses by hand, generation, probes' features, and resume."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from arena import checkpoint as ckpt
from arena.config import CONFIG_DIR, load_config
from arena.data import make_shapes, to_float
from arena.objective import Batch, DataInfo, build_objective
from arena.prior import discriminator_loss
from arena.registry import ConfigError
from arena.trainer import train
from dim.baselines import AAE, NAT, VAE, BiGAN
from dim.baselines.bigan import ge_loss
from dim.baselines.vae import gaussian_kl
from dim.decoder import Decoder
from tests.helpers import assert_same_state, tiny

RES = 16
SHAPES = DataInfo(channels=3, resolution=RES, num_classes=4, num_images=64)
# dcgan32 at 1/8 width (conv 8-16-32, fc 128), a decoder of width 4, small discriminators;
# NAT re-assigns in every epoch (8 batches of 8).
TINY = ["data.name=shapes", f"data.resolution={RES}", "data.num_images=64", "model.width=0.125", "train.batch_size=8"]
TINY_D = {"bigan": ["model.decoder_width=4", "model.d_units=16", "model.d_hidden=[16]"],
          "aae": ["model.decoder_width=4", "objective.prior.hidden=[16, 16]"], "vae": ["model.decoder_width=4"],
          "nat": ["objective.reassign_every=1"]}
NAMES = ("vae", "aae", "bigan", "nat")


def build(name: str, *overrides: str, seed: int = 0):
    cfg = load_config(f"{name}_digits", [*TINY, *TINY_D[name], *overrides])
    torch.manual_seed(seed)
    return build_objective(cfg, SHAPES)


def shapes_batch(n: int = 8, seed: int = 0, epoch: int = 0) -> Batch:
    images, labels = make_shapes(n, RES, seed)
    return Batch(to_float(images), labels, torch.arange(n), epoch)


def run_schedule(objective, batch: Batch, lr: float = 1e-3) -> dict:
    """One training step as the trainer runs it: each phase steps only its players."""
    opts = {n: torch.optim.Adam(net.parameters(), lr=lr) for n, net in objective.nets.items()}
    outs = {}
    for phase in objective.schedule():
        for name, net in objective.nets.items():
            net.requires_grad_(name in phase.players)
        out = objective.loss(phase.name, batch, len(batch.x))
        for name in phase.players:
            opts[name].zero_grad(set_to_none=True)
        out["loss"].backward()
        for name in phase.players:
            opts[name].step()
        outs[phase.name] = out
    return outs


# ----------------------------------------------------------------------------- configs

ROWS = [f"{m}_{ds}" for m in NAMES for ds in ("cifar10", "cifar100", "stl10", "tinyimagenet", "digits")]


@pytest.mark.parametrize("name", ROWS)
def test_every_row_has_a_config_with_the_paper_budget(name):
    assert (CONFIG_DIR / f"{name}.yaml").is_file()
    cfg = load_config(name)
    assert cfg.objective.name == name.split("_")[0]
    if not name.endswith("digits"):  # A.1: Adam 1e-4, batch 64, the DIM rows' encoder and length
        dim_row = load_config(f"dim_l_nce_{name.split('_', 1)[1]}")
        assert (cfg.optim.lr, cfg.train.batch_size, cfg.train.steps) == (1e-4, 64, dim_row.train.steps)
        assert (cfg.model.encoder, cfg.model.y_dim) == (dim_row.model.encoder, 64)
    OBJ = {"vae": VAE, "aae": AAE, "bigan": BiGAN, "nat": NAT}[cfg.objective.name]
    OBJ.check_config(cfg)


@pytest.mark.parametrize("name, override, key", [
    ("bigan", "objective.ge_loss=hinge", "objective.ge_loss"),
    ("bigan", "objective.penalty_weight=-1", "objective.penalty_weight"),
    ("vae", "objective.ndm_code=median", "objective.ndm_code"), ("vae", "objective.beta=-1", "objective.beta"),
    ("aae", "objective.penalty_on=fake", "objective.penalty_on"),
    ("aae", "objective.reconstruction=l1", "objective.reconstruction"),
    ("aae", "objective.prior.name=cauchy", "objective.prior.name"),
    ("vae", "model.decoder_width=0", "model.decoder_width"),
    ("nat", "objective.reassign_every=0", "objective.reassign_every")])
def test_bad_options_name_the_key(name, override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(f"{name}_digits", [override])


def test_the_decoder_rejects_a_resolution_it_cannot_reach():
    with pytest.raises(ConfigError, match="data.resolution.*got 24"):
        Decoder(8, 3, 24)
    assert Decoder(8, 3, 64, width=2)(torch.zeros(2, 8)).shape == (2, 3, 64, 64)


# ----------------------------------------------------------------------------- one step each


@pytest.mark.parametrize("name", NAMES)
def test_one_step_trains_every_player_and_features_are_the_probe_points(name):
    objective = build(name)
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in objective.nets.items()}
    outs = run_schedule(objective, shapes_batch())
    for out in outs.values():
        assert all(torch.isfinite(v).all() for v in out.values()), out
    for n, net in objective.nets.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[n], net.parameters())), f"{n} did not move"
    feats = objective.features(shapes_batch().x)
    enc = objective.encoder
    assert feats["conv"].shape == (8, enc.feature_dims["conv"]) and feats["fc"].shape == (8, enc.feature_dims["fc"])
    assert feats["y"].shape == (8, 64)
    assert objective.nets["encoder"]["encoder"] is enc  # where the probes look for it


def test_vae_y_is_mu_and_z_a_fresh_reproducible_posterior_sample():
    objective = build("vae")
    x = shapes_batch().x
    objective.nets.eval()
    mu, log_sigma = objective.posterior(x)
    a, b = objective.features(x), objective.features(x)
    torch.testing.assert_close(a["y"], mu)
    assert not torch.equal(a["z"], b["z"])  # each call draws new eps
    again = build("vae")
    again.nets.eval()
    torch.testing.assert_close(again.features(x)["z"], a["z"])  # the same sequence of calls: the same samples
    eps = (a["z"] - mu) / log_sigma.exp()
    assert abs(eps.mean().item()) < 0.3 and 0.7 < eps.std().item() < 1.3
    assert objective.ndm_layer == "z" and build("vae", "objective.ndm_code=mu").ndm_layer == "y"


# ----------------------------------------------------------------------------- losses by hand


def test_gaussian_kl_by_hand():
    # KL(N(1, 2^2) || N(0, 1)) = 1/2 (1 + 4 - 1) - log 2;  KL(N(0, 1) || N(0, 1)) = 0
    kl = gaussian_kl(torch.tensor([1.0, 0.0]), torch.tensor([math.log(2.0), 0.0]))
    torch.testing.assert_close(kl, torch.tensor([2.0 - math.log(2.0), 0.0]))


def test_vae_loss_is_pixel_sum_of_squares_plus_beta_kl(monkeypatch):
    objective = build("vae", "objective.beta=0.5")
    monkeypatch.setattr(objective, "noise", lambda n, d: torch.zeros(n, d))  # z = mu
    x = shapes_batch().x
    out = objective.loss("vae", Batch(x, torch.zeros(8)), 8)
    with torch.no_grad():
        mu, log_sigma = objective.posterior(x)
        x_hat = objective.nets["decoder"](mu)
    recon = sum(((x_hat[i] - x[i]) ** 2).sum() for i in range(8)) / 8
    kl = (0.5 * (mu ** 2 + (2 * log_sigma).exp() - 1) - log_sigma).sum() / 8
    torch.testing.assert_close(out["recon"], recon, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["kl"], kl, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["loss"], recon + 0.5 * kl, rtol=1e-4, atol=1e-4)


def test_bigan_ge_losses_by_hand():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    sp = lambda t: math.log1p(math.exp(t))  # noqa: E731
    # non-saturating (labels swapped): -log(1 - s(2)) - log s(-1) = sp(2) + sp(1)
    assert ge_loss(real, fake).item() == pytest.approx(sp(2.0) + sp(1.0), rel=1e-6)
    # minimax: log s(2) + log(1 - s(-1)) = -sp(-2) - sp(-1)
    assert ge_loss(real, fake, "minimax").item() == pytest.approx(-sp(-2.0) - sp(-1.0), rel=1e-6)
    # both push D's real logits down and fake logits up
    for kind in ("nonsaturating", "minimax"):
        r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
        ge_loss(r, f, kind).backward()
        assert r.grad.item() > 0 and f.grad.item() < 0


def test_bigan_discriminator_loss_and_penalty_on_x_at_real_pairs(monkeypatch):
    objective = build("bigan", "objective.penalty_weight=2.0")
    z = torch.randn(8, 64)
    monkeypatch.setattr(objective, "noise", lambda n, d: z)
    x = shapes_batch().x
    out = objective.loss("discriminator", Batch(x, torch.zeros(8)), 8)
    D, G, E = objective.nets["D"], objective.nets["G"], objective.encoder
    with torch.no_grad():
        e_x, x_fake = E(x)["y"], G(z)
    xr = x.clone().requires_grad_()
    real = D(xr, e_x)
    (grad,) = torch.autograd.grad(real.sum(), xr)
    penalty = grad.pow(2).flatten(1).sum(1).mean()
    fake = D(x_fake, z)
    d = torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean()
    torch.testing.assert_close(out["penalty"], penalty.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["loss"], (d + 2.0 * penalty).detach(), rtol=1e-4, atol=1e-5)


class Square(nn.Module):
    def forward(self, v):  # D(v) = sum v^2: dD/dv = 2v, ||dD/dv||^2 = 4 ||v||^2
        return v.pow(2).sum(1, keepdim=True)


def test_prior_penalty_on_the_prior_side_only_or_both():
    v, y = torch.ones(4, 3), 2 * torch.ones(4, 3)  # ||v||^2 = 3, ||y||^2 = 12
    assert discriminator_loss(Square(), v, y, 1.0, "prior")["penalty"].item() == pytest.approx(4 * 3)
    assert discriminator_loss(Square(), v, y, 1.0)["penalty"].item() == pytest.approx(0.5 * (4 * 3 + 4 * 12))


def test_aae_reconstruction_scales_and_adversarial_phase():
    x_hat, x = torch.zeros(8, 3, RES, RES), torch.ones(8, 3, RES, RES)
    assert build("aae").reconstruction_loss(x_hat, x).item() == pytest.approx(3 * RES * RES)
    # cortex: mean over pixels, then / batch size
    assert build("aae", "objective.reconstruction=cortex").reconstruction_loss(x_hat, x).item() == pytest.approx(1 / 8)
    assert [p.name for p in build("aae").phases()] == ["reconstruction", "prior", "adversarial"]
    assert [p.name for p in build("aae", "objective.adversarial=0").phases()] == ["reconstruction", "prior"]
    out = run_schedule(build("aae"), shapes_batch())["adversarial"]
    assert out["loss"].item() == pytest.approx(out["adversarial"].item())


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("name", ["vae", "aae", "bigan"])
def test_decoders_generate_images_in_range_independent_of_the_batch(name):
    objective = build(name)
    run_schedule(objective, shapes_batch())
    z = objective.latent(6, torch.Generator().manual_seed(0))
    x = objective.generate(z)
    assert x.shape == (6, 3, RES, RES) and x.abs().max() <= 1
    torch.testing.assert_close(objective.generate(z[:2]), x[:2])  # running BN statistics: per-image
    assert BiGAN.generates and VAE.generates and AAE.generates and not NAT.generates


def test_bigan_logs_a_reconstruction_ratio_near_one_at_the_start():
    out = run_schedule(build("bigan"), shapes_batch())["generator"]
    assert 0.5 < out["recon_ratio"].item() < 1.5


# ----------------------------------------------------------------------------- trainer


@pytest.mark.parametrize("name", NAMES)
def test_resume_continues_exactly(name, tmp_path, cpu_only):
    common = [*TINY, *TINY_D[name], "train.checkpoint_every=2", "train.log_every=1", "train.sample_every=100"]

    def state(run_dir):
        saved, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
        return {k: saved[k] for k in ("step", "nets", "optimizers", "data")}

    train(tiny(f"{name}_digits", tmp_path / "once", *common, "train.steps=4"))
    train(tiny(f"{name}_digits", tmp_path / "twice", *common, "train.steps=2"))
    train(tiny(f"{name}_digits", tmp_path / "twice", *common, "train.steps=4", "run.resume=latest"))
    assert_same_state(state(tmp_path / "once"), state(tmp_path / "twice"))


def test_bigan_run_writes_sample_grids(tmp_path, cpu_only):
    train(tiny("bigan_digits", tmp_path / "run", *TINY, *TINY_D["bigan"], "train.steps=2", "train.sample_every=2",
               "train.checkpoint_every=2"))
    assert (tmp_path / "run" / "samples" / "step-000002.png").is_file()


# ----------------------------------------------------------------------------- NAT


def test_nat_loss_is_the_squared_distance_of_the_normalized_output_to_its_target():
    objective = build("nat", "objective.reassign_every=2")  # epoch 0: no re-assignment
    batch = shapes_batch()
    out = objective.loss("encoder", batch, 8)
    with torch.no_grad():
        u = torch.nn.functional.normalize(objective.encoder(batch.x)["y"], dim=1)
    t = objective.targets()[objective.target_of[batch.index]]
    torch.testing.assert_close(t.norm(dim=1), torch.ones(8))
    cos = (u * t).sum(1)
    torch.testing.assert_close(out["loss"], (2 - 2 * cos).mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["cosine"], cos.mean(), rtol=1e-5, atol=1e-6)
    assert "reassigned" not in out


def test_nat_reassignment_recovers_the_best_matching_and_keeps_a_permutation():
    objective = build("nat")
    index = torch.tensor([5, 17, 2, 40, 33, 8, 60, 11])
    held = objective.target_of[index].clone()
    wanted = held[torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])]  # a shuffle of the targets the batch holds
    u = objective.targets()[wanted]  # outputs sitting exactly on the wanted targets
    changed = objective.reassign(u, index)
    assert torch.equal(objective.target_of[index], wanted)
    assert changed.item() == 1.0  # the shuffle moved every target
    assert torch.equal(objective.target_of.sort().values, torch.arange(64))  # still a permutation
    # images outside the batch keep theirs
    others = torch.tensor([i for i in range(64) if i not in index.tolist()])
    assert torch.equal(objective.target_of[others], build("nat").target_of[others])


def test_nat_reassigns_every_kth_epoch_only():
    objective = build("nat", "objective.reassign_every=3")
    assert [objective.reassigning(e) for e in range(7)] == [False, False, True, False, False, True, False]
    assert "reassigned" in objective.loss("encoder", shapes_batch(epoch=2), 8)


def test_the_stream_gives_each_image_its_training_set_index_and_epoch():
    from arena.data import DataConfig, build_dataset
    from arena.stream import BatchStream

    ds = build_dataset(DataConfig(name="shapes", resolution=8, num_images=16), "train")
    stream = BatchStream(ds, 8, seed=0)
    seen = []
    for epoch in (0, 0, 1, 1):
        batch = next(stream)
        assert batch.epoch == epoch
        torch.testing.assert_close(batch.x, to_float(ds.images[batch.index]))
        seen.append(batch.index)
    assert sorted(torch.cat(seen[:2]).tolist()) == list(range(16))  # one epoch: every image once


def test_the_digits_check_measures_distance_to_the_prior_by_a_gaussian_fit():
    from eval.baselines_digits import gaussian_fit_kl

    z = torch.randn(20000, 4, generator=torch.Generator().manual_seed(0))
    assert gaussian_fit_kl(z) == pytest.approx(0.0, abs=0.01)
    # N(1, I): m'm / 2 = 2;  N(0, 4 I): (tr S - d - log det S) / 2 = (16 - 4 - 4 log 4) / 2
    assert gaussian_fit_kl(z + 1) == pytest.approx(2.0, abs=0.05)
    assert gaussian_fit_kl(2 * z) == pytest.approx((12 - 4 * math.log(4)) / 2, abs=0.05)


def test_the_digits_checks_run_on_the_driver_and_a_rerun_reuses_runs_and_measurements(tmp_path, capsys):
    import json

    from eval import baselines_digits

    argv = ["--runs", str(tmp_path), "--ndm-steps", "2", "train.steps=2", "model.width=0.125", "train.log_every=1"]
    assert baselines_digits.main(argv) == 0
    first = capsys.readouterr().out
    records = {r["run"]: r for r in json.loads((tmp_path / "checks.json").read_text())["checks"]}
    assert list(records) == list(baselines_digits.RUNS) and all(r["trained"] == "fresh" for r in records.values())
    assert records["nat"]["is_permutation"] is True and records["vae"]["ndm_sample"] >= 0
    assert 0 < records["aae"]["prior_kl_gaussian_fit"] and "recon_ratio_test" in records["bigan"]
    assert first.count("measuring") == 5 and "\nvae                  msssim_own " in first
    assert (tmp_path / "checks.md").read_text().startswith("| run | checks |\n")
    assert baselines_digits.main(argv) == 0  # the same command again: nothing trained or measured
    again = capsys.readouterr().out
    assert again.count("reused, not trained") == 5 and again.count("measured before with the same settings") == 5
    assert json.loads((tmp_path / "checks.json").read_text())["checks"] == list(records.values())
    assert again.split("kept\n")[-1] == first.split("[baselines] nat: measuring\n")[-1]  # the same table
