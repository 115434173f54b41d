"""The `dim` and `supervised` objectives: configs, one step per variant, gradient paths,
the prior game's direction, occlusion, and the trainer end to end."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import dim.objective as dim_objective
from arena import checkpoint as ckpt
from arena.config import CONFIG_DIR, load_config
from arena.data import make_shapes, to_float
from arena.objective import Batch, DataInfo
from arena.registry import ConfigError
from arena.runs import load_run
from arena.trainer import train
from dim import DIM, Supervised
from dim.estimators import nce_mi
from tests.helpers import assert_same_state, tiny

RES = 16
SHAPES = DataInfo(channels=3, resolution=RES, num_classes=4)
# dcgan32 at 1/8 width (conv 8-16-32, fc 128, local map conv2 16 x 4 x 4), small critics.
DATA = ["data.name=shapes", f"data.resolution={RES}", "data.num_images=64", "model.width=0.125",
        "train.batch_size=8"]
TINY = [*DATA, "model.mi_units=256", "model.global_units=256", "model.concat_units=256", "model.coord_hidden=256",
        "objective.prior.hidden=[32, 16]"]



def shapes_batch(n: int = 8, seed: int = 0) -> Batch:
    images, labels = make_shapes(n, RES, seed)
    return Batch(to_float(images), labels)


def build(*overrides: str, config: str = "dim_l_digits", info: DataInfo = SHAPES, seed: int = 0):
    cfg = load_config(config, [*(DATA if config.startswith("supervised") else TINY), *overrides])
    torch.manual_seed(seed)
    cls = DIM if cfg.objective.name == "dim" else Supervised
    return cls(cfg, info)


def step(objective, phase_name: str, batch: Batch | None, optimizers: dict) -> dict:
    """One phase as the trainer runs it: only the phase's players get weight gradients."""
    phase = next(p for p in objective.phases() if p.name == phase_name)
    for name, net in objective.nets.items():
        net.requires_grad_(name in phase.players)
    out = objective.loss(phase_name, batch, len(batch.x))
    for name in phase.players:
        optimizers[name].zero_grad(set_to_none=True)
    out["loss"].backward()
    for name in phase.players:
        optimizers[name].step()
    return out


def optimizers_for(objective, lr: float = 1e-3) -> dict:
    return {name: torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
            for name, net in objective.nets.items()}


# ----------------------------------------------------------------------------- configs


SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem.startswith(("dim_", "supervised_")))


def test_there_are_configs_for_every_dataset():
    for ds in ("cifar10", "cifar100", "stl10", "tinyimagenet", "digits"):
        assert f"supervised_{ds}" in SHIPPED
        assert f"dim_g_{ds}" in SHIPPED
    for ds in ("cifar10", "cifar100", "stl10", "tinyimagenet"):
        for stem in ("dim_l_jsd", "dim_l_nce", "dim_lg", "dim_l_nce_coord", "dim_l_nce_occlude"):
            assert f"{stem}_{ds}" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_loads(name):
    cfg = load_config(name)
    assert cfg.objective.name == ("supervised" if name.startswith("supervised_") else "dim")
    if not name.endswith("digits"):
        assert cfg.train.batch_size == 64 and cfg.optim.lr == 1e-4 and cfg.optim.betas == [0.5, 0.999]


# ----------------------------------------------------------------------------- one step each


@pytest.mark.parametrize("extra", [["objective.occlude=true", "objective.occlusion_block=4"],
                                   ["objective.coord=absolute"], ["objective.coord=relative"]],
                         ids=["occlude", "coord_absolute", "coord_relative"])
@pytest.mark.parametrize("critic", ["encode_dot", "concat_convolve"])
@pytest.mark.parametrize("estimator", ["jsd", "nce", "dv"])
def test_one_training_step(estimator, critic, extra):
    objective = build(f"objective.estimator={estimator}", f"model.local_critic={critic}",
                      "objective.alpha=0.5", "objective.beta=1.0", "objective.gamma=0.1", *extra)
    assert [p.name for p in objective.phases()] == ["prior", "encoder"]
    opts = optimizers_for(objective)
    before = objective.encoder.convs["conv1"][0].weight.detach().clone()
    batch = shapes_batch()
    d_out = step(objective, "prior", batch, opts)
    e_out = step(objective, "encoder", batch, opts)  # the encoder phase takes the prior phase's batch
    for out in (d_out, e_out):
        assert all(torch.isfinite(v).all() for v in out.values()), out
    assert {"global_mi", "local_mi", "prior"} <= set(e_out)
    if "coord" in extra[0]:
        assert "coord" in e_out
    grad = objective.encoder.convs["conv1"][0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not torch.equal(before, objective.encoder.convs["conv1"][0].weight)


def test_nce_with_fewer_negatives_uses_exactly_max_negatives_images():
    """K = 1 + max_negatives * L candidates per positive: the images after i in batch
    order (cyclically), every location of each, and no other image."""
    objective = build("objective.estimator=nce", "objective.max_negatives=2", "objective.gamma=0")
    n, l, m = 8, 16, 2
    chosen = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        chosen[i, [(i + 1) % n, (i + 2) % n]] = True
    # Positives 0, the chosen negatives 0, every other negative 30 (it would dominate
    # the softmax if it were a candidate): the estimate is log K - log K = 0.
    scores = torch.where(chosen, 0.0, 30.0)[:, :, None].expand(n, n, l).clone()
    scores[torch.arange(n), torch.arange(n)] = 0.0
    assert objective.mi(scores).item() == pytest.approx(0.0, abs=1e-5)
    # The chosen negatives far below the positives: the estimate is log K itself.
    scores[chosen] = -1e4
    assert objective.mi(scores).item() == pytest.approx(math.log(1 + m * l), rel=1e-6)

    # The objective's reported local_mi is that estimate on its critic's scores.
    seen = []
    objective.nets["encoder"]["local_critic"].register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    out = step(objective, "encoder", shapes_batch(), optimizers_for(objective))
    (critic_scores,) = seen
    assert critic_scores.shape == (n, n, l)
    torch.testing.assert_close(out["local_mi"], nce_mi(critic_scores, max_negatives=m))
    assert not torch.allclose(out["local_mi"], nce_mi(critic_scores))  # all 7 negatives: another value


@pytest.mark.parametrize("coord_weight", [0.3, 0.0])
def test_encoder_loss_is_the_weighted_sum_of_the_terms(coord_weight):
    """loss = -(alpha I_G + beta I_L) + gamma prior + coord_weight coord, in value and in
    gradient; each term's head gets a gradient from the loss exactly when its weight is
    nonzero, and every term reaches the encoder."""
    alpha, beta, gamma = 0.5, 1.5, 0.2
    objective = build(f"objective.alpha={alpha}", f"objective.beta={beta}", f"objective.gamma={gamma}",
                      "objective.coord=both", f"objective.coord_weight={coord_weight}")
    player = objective.nets["encoder"]
    assert set(player) == {"encoder", "global_critic", "local_critic", "coord_absolute", "coord_relative"}
    x = shapes_batch().x
    torch.manual_seed(3)  # the relative coordinates' source locations
    terms = objective.encoder_terms(x)
    torch.manual_seed(3)
    out = objective.loss("encoder", Batch(x, torch.zeros(8)), 8)
    assert set(terms) == {"global_mi", "local_mi", "prior", "coord"}
    weights = {"global_mi": -alpha, "local_mi": -beta, "prior": gamma, "coord": coord_weight}
    expected = sum(w * terms[k] for k, w in weights.items())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    for k in terms:
        assert out[k].item() == pytest.approx(terms[k].item(), rel=1e-5)

    enc_params = list(objective.encoder.parameters())

    def grads(value, params):
        g = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)]

    per_term = {k: grads(v, enc_params) for k, v in terms.items()}
    for k, g in per_term.items():
        assert any(gi.abs().sum() > 0 for gi in g), f"{k} does not reach the encoder"
    for got, *parts in zip(grads(out["loss"], enc_params), *(per_term[k] for k in weights)):
        torch.testing.assert_close(got, sum(w * p for w, p in zip(weights.values(), parts)), rtol=1e-3, atol=1e-5)

    owners = {"global_critic": alpha, "local_critic": beta, "coord_absolute": coord_weight,
              "coord_relative": coord_weight}
    for owner, weight in owners.items():
        g = grads(out["loss"], list(player[owner].parameters()))
        assert any(gi.abs().sum() > 0 for gi in g) == (weight != 0), owner
    g = grads(out["loss"], list(objective.nets["prior_D"].parameters()))
    assert any(gi.abs().sum() > 0 for gi in g)  # through the prior term (prior_D does not step here)


def test_weights_decide_the_nets_and_phases():
    objective = build("objective.alpha=0", "objective.beta=1", "objective.gamma=0")
    assert set(objective.nets) == {"encoder"}
    assert set(objective.nets["encoder"]) == {"encoder", "local_critic"}
    (phase,) = objective.phases()
    assert phase.name == "encoder" and phase.data == "fresh"
    objective = build("objective.alpha=1", "objective.beta=0", "objective.gamma=1")
    assert set(objective.nets) == {"encoder", "prior_D"}
    assert set(objective.nets["encoder"]) == {"encoder", "global_critic"}
    prior, enc = objective.phases()
    assert prior.players == ("prior_D",) and prior.data == "fresh" and enc.data == "previous"
    out = objective.loss("encoder", shapes_batch(), 8)
    assert set(out) == {"loss", "global_mi", "prior"}


# ----------------------------------------------------------------------------- prior direction


def test_prior_discriminator_separates_and_the_encoder_moves_toward_the_prior():
    """D maximizes the divergence, the encoder minimizes it (the public DIM bug was the
    encoder trained to look *fake*)."""
    objective = build("objective.alpha=0", "objective.beta=1.0e-6", "objective.gamma=1",
                      "objective.prior.penalty=0")
    opts = optimizers_for(objective, lr=2e-3)
    batch = shapes_batch(16)
    D = objective.nets["prior_D"]

    def codes():
        with torch.no_grad(), dim_objective.frozen_bn_stats(objective.encoder):
            return objective.prior_input(objective.encoder(batch.x)["y"])

    enc_state = {k: v.clone() for k, v in objective.encoder.state_dict().items()}
    first = step(objective, "prior", batch, opts)
    for _ in range(60):
        last = step(objective, "prior", batch, opts)
    # Encoder untouched by the prior phase; D now tells prior samples (real) from codes (fake).
    for k, v in objective.encoder.state_dict().items():
        assert torch.equal(v, enc_state[k]), k
    assert last["d_prior"] > first["d_prior"] + 0.3
    assert last["d_real"] > 0 > last["d_fake"]

    # Encoder steps alone against the fixed D: its codes move to where D says "prior".
    with torch.no_grad():
        d_before = D(codes()).mean().item()
    d_state = {k: v.clone() for k, v in D.state_dict().items()}
    for _ in range(15):
        step(objective, "encoder", batch, opts)
    for k, v in D.state_dict().items():
        assert torch.equal(v, d_state[k]), k
    with torch.no_grad():
        d_after = D(codes()).mean().item()
    assert d_after > d_before + 0.5, (d_before, d_after)


def test_prior_phase_loss_by_hand():
    """loss = E_v sp(-D(v)) + E_y sp(D(y)) + penalty * (R(v) + R(y)) / 2, R = E ||dD/dx||^2,
    v ~ U[0, 1]^d, y = sigmoid(Y): D is a one-hidden-layer ReLU MLP, so its input gradient
    is W1^T (w2 * 1[W1 x + b1 > 0]), computed here without autograd."""
    objective = build("objective.gamma=1", "objective.prior.hidden=[16]", "objective.prior.penalty=0.7")
    batch = shapes_batch()
    with torch.no_grad():
        y = torch.sigmoid(objective.encoder(batch.x)["y"])  # batch statistics, as the phase computes them
    torch.manual_seed(5)
    out = objective.loss("prior", batch, 8)
    torch.manual_seed(5)
    v = torch.rand(8, 64)  # the prior samples the phase drew
    lin1, lin2 = objective.nets["prior_D"].net[0], objective.nets["prior_D"].net[2]
    W1, b1, w2, b2 = lin1.weight.detach(), lin1.bias.detach(), lin2.weight.detach()[0], lin2.bias.detach()

    def D_and_R(x):
        pre = x @ W1.T + b1
        d = torch.relu(pre) @ w2 + b2
        grad = (w2 * (pre > 0)) @ W1  # [n, dim]
        return d, grad.pow(2).sum(1).mean()

    (d_v, r_v), (d_y, r_y) = D_and_R(v), D_and_R(y)
    sp = torch.nn.functional.softplus
    gan = sp(-d_v).mean() + sp(d_y).mean()
    assert out["penalty"].item() == pytest.approx((0.5 * (r_v + r_y)).item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((gan + 0.7 * 0.5 * (r_v + r_y)).item(), rel=1e-5)
    assert out["d_prior"].item() == pytest.approx(-gan.item(), rel=1e-5)
    assert out["d_real"].item() == pytest.approx(d_v.mean().item(), rel=1e-5, abs=1e-6)


def test_prior_sigmoid_false_matches_the_raw_code():
    on = build("objective.gamma=1", "objective.prior.hidden=[16]")
    off = build("objective.gamma=1", "objective.prior.hidden=[16]", "objective.prior_sigmoid=false")
    y = torch.randn(8, 64)
    assert torch.equal(on.prior_input(y), torch.sigmoid(y)) and torch.equal(off.prior_input(y), y)
    batch = shapes_batch()
    seen = []
    off.nets["prior_D"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    off.loss("prior", batch, 8)
    with torch.no_grad():
        raw = off.encoder(batch.x)["y"]
    torch.testing.assert_close(seen[-1], raw)  # D saw Y itself (the prior samples came first)
    assert (raw < 0).any()  # not squashed into (0, 1)


# ----------------------------------------------------------------------------- occlusion


def test_occlusion_feeds_the_occluded_image_to_the_global_vector_only(monkeypatch):
    seen, masks = [], []
    real_mask = dim_objective.occlusion_mask

    def recording_mask(*args, **kwargs):
        masks.append(real_mask(*args, **kwargs))
        return masks[-1]

    monkeypatch.setattr(dim_objective, "occlusion_mask", recording_mask)
    batch = shapes_batch()
    occ = build("objective.occlude=true", "objective.occlusion_block=4", "objective.gamma=0")
    plain = build("objective.gamma=0")  # same seed: same encoder weights
    occ.encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    occ.loss("encoder", batch, 8)
    plain.loss("encoder", batch, 8)
    assert len(seen) == 2 and torch.equal(seen[0], batch.x)
    assert torch.equal(seen[1], batch.x * masks[0])
    assert (masks[0] == 0).any() and (masks[0] == 1).any()
    # The occluded forward leaves the running statistics as one clean forward does.
    for (k, a), b in zip(occ.encoder.state_dict().items(), plain.encoder.state_dict().values()):
        assert torch.equal(a, b), k


def test_prior_phase_does_not_touch_batch_norm_statistics():
    objective = build("objective.gamma=1")
    before = {k: v.clone() for k, v in objective.encoder.state_dict().items()}
    objective.loss("prior", shapes_batch(), 8)
    for k, v in objective.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("overrides,key", [
    (["objective.occlude=true", "objective.occlusion_block=10"], "objective.occlusion_block"),
    (["objective.estimator=jsdd"], "objective.estimator"),
    (["model.local_critic=dot"], "model.local_critic"),
    (["model.encoder=alexnet"], "model.encoder"),
    (["model.encoder=alexnet64"], "data.resolution"),
    (["model.local_layer=conv9"], "model.local_layer"),
    (["objective.alpha=0", "objective.beta=0"], "objective.alpha"),
    (["objective.estimator=dv", "objective.max_negatives=4"], "objective.max_negatives"),
    (["objective.coord=diagonal"], "objective.coord"),
    (["objective.prior.name=cauchy"], "objective.prior.name"),
    (["train.phases=[[encoder, 1], [prior, 1]]"], "train.phases"),
])
def test_bad_options_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("dim_l_digits", [*TINY, *overrides])


# ----------------------------------------------------------------------------- features


def test_features_are_eval_mode_and_leave_training_mode_alone():
    objective = build()
    objective.nets.train()
    x = shapes_batch().x
    f = objective.features(x)
    enc = objective.encoder
    assert f["conv"].shape == (8, enc.feature_dims["conv"]) and f["fc"].shape == (8, enc.feature_dims["fc"])
    assert f["y"].shape == (8, 64) and not f["y"].requires_grad
    assert enc.training
    # eval mode: one image's features do not depend on the rest of the batch
    assert torch.allclose(objective.features(x[:1])["y"], f["y"][:1], atol=1e-5)


# ----------------------------------------------------------------------------- supervised


def test_supervised_learns_shapes():
    objective = build(config="supervised_digits")
    opts = optimizers_for(objective, lr=3e-3)
    images, labels = make_shapes(64, RES, 3)
    batch = Batch(to_float(images), labels)
    first = step(objective, "classifier", batch, opts)
    for _ in range(40):
        last = step(objective, "classifier", batch, opts)
    assert last["loss"] < 0.5 * first["loss"]
    assert last["accuracy"] > 0.9


def test_supervised_ignores_unlabeled_and_handles_multilabel():
    objective = build(config="supervised_digits")
    batch = shapes_batch()
    half = batch.y.clone()
    half[4:] = -1
    out = objective.loss("classifier", Batch(batch.x, half), 8)
    objective.nets.eval()  # no dropout / batch-stat noise: compare with the labeled half alone
    a = objective.loss("classifier", Batch(batch.x, half), 8)
    logits = objective.logits(batch.x)
    ref = torch.nn.functional.cross_entropy(logits[:4], batch.y[:4])
    assert torch.allclose(a["loss"], ref, atol=1e-5) and out["labeled"] == 0.5
    none = objective.loss("classifier", Batch(batch.x, torch.full_like(batch.y, -1)), 8)
    assert none["loss"] == 0
    objective.nets.train()

    multi = build(config="supervised_digits", info=DataInfo(3, RES, 5, multilabel=True))
    y = torch.randint(0, 2, (8, 5))
    y[0] = -1
    out = multi.loss("classifier", Batch(batch.x, y), 8)
    assert torch.isfinite(out["loss"]) and 0 <= out["accuracy"] <= 1
    out["loss"].backward()
    assert multi.encoder.convs["conv1"][0].weight.grad.abs().sum() > 0


def test_supervised_needs_labels():
    with pytest.raises(ConfigError, match="labels"):
        build(config="supervised_digits", info=DataInfo(3, RES, 0))


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("config", ["dim_l_digits", "dim_g_digits", "supervised_digits"])
def test_train_end_to_end_and_load_run_restores_features(tmp_path, config):
    small = ["model.width=0.125", "train.batch_size=16", "train.steps=3", "train.log_every=1"]
    if config.startswith("dim"):
        small += ["model.mi_units=256", "objective.prior.hidden=[32, 16]"]
    objective = train(tiny(config, tmp_path, *small))
    assert ckpt.resolve_checkpoint(tmp_path, "latest").name == "checkpoint-000003"
    assert (Path(tmp_path) / "metrics.jsonl").is_file()
    device = next(objective.nets.parameters()).device  # train() picks the GPU where there is one
    cfg, loaded, step_ = load_run(tmp_path, device=device)
    assert step_ == 3 and type(loaded) is type(objective)
    images, _ = make_shapes(6, 16, 0)
    x = to_float(images)[:, :1].to(device)  # digits are grayscale
    a, b = objective.features(x), loaded.features(x)
    tol = 1e-6 if device.type == "cpu" else 1e-4  # a GPU may pick other conv kernels for the two copies
    for k in ("conv", "fc", "y"):
        assert torch.allclose(a[k], b[k], atol=tol, rtol=tol), k


def test_resume_continues_exactly_with_occlusion_and_relative_coordinates(tmp_path, cpu_only):
    """Occlusion masks and coordinate sources come from the process RNG, and the encoder
    phase reuses the prior phase's batch: a resumed run must still match an unbroken one."""
    common = ["model.width=0.125", "model.mi_units=64", "objective.prior.hidden=[16]", "train.batch_size=16",
              "objective.occlude=true", "objective.occlusion_block=4", "objective.coord=relative",
              "model.coord_hidden=64", "train.checkpoint_every=2"]

    def state(run_dir):
        saved, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
        return {k: saved[k] for k in ("step", "nets", "optimizers", "data")}

    train(tiny("dim_l_digits", tmp_path / "once", *common, "train.steps=4"))
    train(tiny("dim_l_digits", tmp_path / "twice", *common, "train.steps=2"))
    train(tiny("dim_l_digits", tmp_path / "twice", *common, "train.steps=4", "run.resume=latest"))
    assert_same_state(state(tmp_path / "once"), state(tmp_path / "twice"))
