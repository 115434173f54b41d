"""The representation probes (eval.probes) on synthetic data with known answers, and the
probe CLIs (eval.dim_probes, eval.neighbours, eval.ablation) end to end on tiny runs."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from arena.registry import ConfigError
from arena.trainer import train
from dim.heads import MLPHead
from eval import probes as P
from tests.helpers import tiny

ROOT = Path(__file__).resolve().parent.parent



def label_features(n: int, classes: int = 10, dim: int = 32, noise: float = 0.1, seed: int = 0):
    """Features that encode the label: one-hot (padded to dim) + Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.zeros(n, dim)
    x[torch.arange(n), y] = 1.0
    return x + noise * torch.randn(n, dim, generator=g), y


def random_features(n: int, classes: int = 10, dim: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randint(0, classes, (n,), generator=g)


# Chance is 10% with 10 classes; with 1000 test points the accuracy of a label-blind
# classifier has a standard deviation of about 1 point, so 10 +- 5 is a > 4 sigma band.
CHANCE_TOLERANCE = 5.0


@pytest.mark.parametrize("solver", ["sgd", "liblinear"])
def test_svm_probe_separates_label_features_and_is_at_chance_on_noise(solver):
    xtr, ytr = label_features(1000, seed=0)
    xte, yte = label_features(1000, seed=1)
    good = P.svm_probe(xtr, ytr, xte, yte, runs=3, solver=solver)
    assert good["mean"] > 98.0 and good["runs"] == 3 and good["std"] >= 0
    rtr, rytr = random_features(1000, seed=2)
    rte, ryte = random_features(1000, seed=3)
    chance = P.svm_probe(rtr, rytr, rte, ryte, runs=2, solver=solver)
    assert abs(chance["mean"] - 10.0) < CHANCE_TOLERANCE


def test_svm_probe_reports_test_not_train_accuracy():
    # Random labels are memorized by a linear SVM in 200 dims with 150 points (train
    # accuracy ~100%); the probe must report the held-out accuracy, which is chance.
    xtr, ytr = random_features(150, dim=200, seed=4)
    xte, yte = random_features(1000, dim=200, seed=5)
    out = P.svm_probe(xtr, ytr, xte, yte, runs=1, solver="liblinear")
    assert abs(out["mean"] - 10.0) < CHANCE_TOLERANCE


def test_svm_probe_multilabel_gives_mean_min_max_over_attributes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g)
    labels = torch.stack([(x[:, 0] > 0), (x[:, 1] > 0), torch.rand(600, generator=g) > 0.5], 1).long()
    out = P.svm_probe(x[:400], labels[:400], x[400:], labels[400:], runs=2)
    assert set(out) >= {"mean", "min", "max", "std", "per_attribute"}
    assert out["per_attribute"][0] > 95 and out["per_attribute"][1] > 95
    assert abs(out["min"] - 50) < 12 and out["max"] > 95  # attribute 2 is a coin flip
    assert out["min"] <= out["mean"] <= out["max"]


def test_mlp_probe_separates_label_features_and_is_at_chance_on_noise():
    xtr, ytr = label_features(1000, seed=0)
    xte, yte = label_features(1000, seed=1)
    assert P.mlp_probe(xtr, ytr, xte, yte, num_classes=10, epochs=15, lr=1e-3) > 98.0
    rtr, rytr = random_features(1000, seed=2)
    rte, ryte = random_features(1000, seed=3)
    acc = P.mlp_probe(rtr, rytr, rte, ryte, num_classes=10, epochs=15, lr=1e-3)
    assert abs(acc - 10.0) < CHANCE_TOLERANCE


def test_mlp_head_is_the_official_probe():
    head = MLPHead(32, 10)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.Dropout, nn.ReLU, nn.Linear]
    assert head.net[0].out_features == 200 and head.net[2].p == 0.1


def correlated_gaussians(n: int, d: int, rho: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, d, generator=g)


def test_mine_estimates_the_mi_of_correlated_gaussians():
    d, rho = 2, 0.9
    true = -d / 2 * math.log(1 - rho ** 2)  # 1.66 nats
    x, y = correlated_gaussians(4096, d, rho, seed=0)
    xt, yt = correlated_gaussians(2048, d, rho, seed=1)
    est = P.mine_estimate(x, y, xt, yt, steps=800, batch_size=256, lr=1e-3, hidden=128)
    # The DV bound is a lower bound: a well-trained critic lands a little below the truth.
    assert true * 0.85 < est < true * 1.05, (est, true)
    xi, yi = correlated_gaussians(4096, d, 0.0, seed=2)
    xit, yit = correlated_gaussians(2048, d, 0.0, seed=3)
    assert abs(P.mine_estimate(xi, yi, xit, yit, steps=300, hidden=64)) < 0.1


def test_mine_accepts_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (128, 1, 16, 16), dtype=torch.uint8, generator=g)
    y = x.float().flatten(1)[:, :4]  # Y a function of X
    est = P.mine_estimate(x[:96], y[:96], x[96:], y[96:], steps=30, batch_size=32, hidden=32)
    assert math.isfinite(est)


def test_shuffle_dims_keeps_each_marginal():
    y = torch.arange(20.0).view(10, 2)
    s = P.shuffle_dims(y, torch.Generator().manual_seed(0))
    for k in range(2):
        assert torch.equal(s[:, k].sort().values, y[:, k])
    assert not torch.equal(s, y)


def test_ndm_is_zero_for_independent_and_positive_for_dependent_dimensions():
    g = torch.Generator().manual_seed(0)
    d, rho = 4, 0.5
    corr = (1 - rho) * torch.eye(d) + rho * torch.ones(d, d)  # equicorrelated Gaussian
    chol = torch.linalg.cholesky(corr)
    dep, dep_t = torch.randn(4096, d, generator=g) @ chol.T, torch.randn(2048, d, generator=g) @ chol.T
    # Total correlation KL(p(y) || prod_k p(y_k)) = -1/2 log det(corr) = 0.58 nats here.
    true = -0.5 * math.log((1 - rho) ** (d - 1) * (1 + (d - 1) * rho))
    indep, indep_t = torch.randn(4096, d, generator=g), torch.randn(2048, d, generator=g)
    assert abs(P.ndm(indep, indep_t, steps=600, hidden=128)) < 0.05
    assert abs(P.ndm(indep, indep_t, sigmoid=True, steps=600, hidden=128)) < 0.05
    assert abs(P.ndm(dep, dep_t, steps=600, hidden=128) - true) < 0.2 * true
    # The sigmoid leaves the total correlation unchanged but squashes the tails, which the
    # estimator sees: a lower but clearly positive estimate after the same training.
    assert P.ndm(dep, dep_t, sigmoid=True, steps=600, hidden=128) > 0.3


def test_msssim_is_one_for_identical_images_and_lower_for_noisy_ones():
    g = torch.Generator().manual_seed(0)
    for r in (16, 32):
        x = torch.rand(8, 1, r, r, generator=g) * 2 - 1
        x = nn.functional.avg_pool2d(x, 3, 1, 1)  # some structure
        assert P.msssim(x, x) == pytest.approx(1.0, abs=1e-5)
        noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
        very = (x + 1.0 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
        assert P.msssim(noisy, x) < 0.95 and P.msssim(very, x) < P.msssim(noisy, x)
    assert P.msssim_scales(16) == 3 and P.msssim_scales(32) == 4 and P.msssim_scales(64) == 5


def test_msssim_probe_decodes_an_informative_code_better_than_noise():
    from arena.data import make_shapes

    images, _ = make_shapes(640, 16, seed=0)
    code = images.float().flatten(1)[:, ::8] / 255  # a lossy but informative code
    noise = torch.randn(len(images), code.shape[1], generator=torch.Generator().manual_seed(0))
    good = P.msssim_probe(code[:512], images[:512], code[512:], images[512:], epochs=8, width=16)
    bad = P.msssim_probe(noise[:512], images[:512], noise[512:], images[512:], epochs=8, width=16)
    assert 0 <= bad < good <= 1


class TinyEncoder(nn.Module):
    """A stand-in with the DIM encoder's interface: x -> {conv, fc, y, local}."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        c = self.conv(x)
        fc = torch.relu(self.fc(c.flatten(1)))
        return {"local": c, "conv": c, "fc": fc, "y": self.out(fc)}


def quadrant_images(n: int, seed: int):
    """8x8 RGB images whose label (0..3) is the bright quadrant, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = 0.4 * torch.randn(n, 3, 8, 8, generator=g)
    for k in range(4):
        r, c = divmod(k, 2)
        x[labels == k, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 1.0
    return x.clamp(-1, 1), labels


def test_semi_probe_fine_tunes_a_copy_and_learns_the_labels():
    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = quadrant_images(400, 0), quadrant_images(200, 1)
    enc = TinyEncoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    acc = P.semi_probe(enc, P.ImageBatches(xtr, ytr, 50, shuffle=True), P.ImageBatches(xte, yte, 100),
                       num_outputs=4, epochs=5, lr=3e-3)
    assert acc > 90  # chance 25%
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's weights are untouched


def test_semi_probe_of_a_sync_bn_encoder_needs_no_other_process(monkeypatch):
    """The probes run on the main process: fine-tuning an encoder trained with model.sync_bn
    must not gather batch statistics from processes that are not there (it would hang)."""
    import arena.distributed as D

    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = quadrant_images(200, 0), quadrant_images(100, 1)
    enc = D.convert_sync_batchnorm(TinyEncoder())
    monkeypatch.setattr(D, "world_size", lambda: 2)  # as under `accelerate launch` with 2 processes

    def no_collective(*args, **kwargs):
        raise AssertionError("a collective on one process")

    monkeypatch.setattr(D, "gather", no_collective)
    P.semi_probe(enc, P.ImageBatches(xtr, ytr, 50), P.ImageBatches(xte, yte, 100), num_outputs=4, epochs=1)
    assert not any(getattr(m, "local", False) for m in enc.modules())  # the caller's encoder is unchanged


def test_nearest_neighbours_uses_l1_and_excludes_the_query():
    keys = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.5], [3.0, 0.0]])
    # From (0, 0): L1 distances 2, 1.5, 3 (L2 would rank (1, 1) first: 1.41 < 1.5).
    idx = P.nearest_neighbours(keys[:1], keys, k=2, exclude=torch.tensor([0]))
    assert idx.tolist() == [[2, 1]]


def test_local_nce_loss_map_matches_the_nce_estimator():
    from dim.critics import EncodeDotCritic
    from dim.estimators import nce_mi
    from eval.neighbours import local_nce_loss_map

    torch.manual_seed(0)
    enc, critic = TinyEncoder(channels=1), EncodeDotCritic(4, 8, units=16)
    x = torch.randn(6, 1, 8, 8)
    loss = local_nce_loss_map(enc, critic, x)
    assert loss.shape == (6, 4, 4) and (loss > 0).all()
    with torch.no_grad():
        out = enc(x)
        scores = critic(out["y"], out["local"])
    n, l = 6, 16
    assert nce_mi(scores).item() == pytest.approx(math.log(1 + (n - 1) * l) - loss.mean().item(), abs=1e-4)


# ---------------------------------------------------------------------------- the CLIs


TINY_DIM = ["model.width=0.125", "model.mi_units=32", "model.global_units=32", "objective.prior.hidden=[32]",
            "train.batch_size=32", "train.log_every=1"]
CHEAP = ["--runs", "2", "--mlp-epochs", "2", "--msssim-epochs", "1", "--mine-steps", "10", "--ndm-steps", "10",
         "--semi-epochs", "1", "--max-train", "256", "--max-test", "128", "--device", "cpu"]


STEP0: dict = {}  # the weights the trainer had when dim_run's first loss was computed


@pytest.fixture(scope="module")
def dim_run(tmp_path_factory):
    from arena.trainer import train
    from dim import DIM

    real_loss = DIM.loss

    def spy(self, phase, batch, batch_size):
        if not STEP0:
            STEP0.update({k: v.detach().cpu().clone() for k, v in self.nets.state_dict().items()})
        return real_loss(self, phase, batch, batch_size)

    run = tmp_path_factory.mktemp("probe_runs") / "dim_l"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DIM, "loss", spy)
        train(tiny("dim_l_digits", run, *TINY_DIM, "train.steps=2"))
    return run


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dim_probes_cli_prints_json_appends_metrics_and_table(dim_run, capsys):
    from eval import dim_probes

    assert dim_probes.main(["--run", str(dim_run), "--probes", "svm,mlp,semi,msssim,mine,ndm", "--table",
                            *CHEAP]) == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    result = json.loads(first)
    assert set(result) == {"svm", "mlp", "semi", "msssim", "mine", "ndm", "settings"}
    assert set(result["svm"]) == {"conv", "fc", "y"} and set(result["svm"]["y"]) >= {"mean", "std"}
    assert set(result["ndm"]) == {"y", "sigmoid(y)"}
    assert 0 <= result["msssim"]["y"] <= 1
    s = result["settings"]
    assert s["step"] == 2 and s["n_train"] == 256 and s["n_test"] == 128 and s["dataset"] == "digits"
    last = _read_jsonl(dim_run / "metrics.jsonl")[-1]
    assert last["step"] == 2 and last["svm"] == result["svm"]
    assert "| probe | layer |" in rest and "| svm | conv |" in rest and "| ndm | sigmoid(y) |" in rest


def test_dim_probes_random_init_is_the_step_zero_encoder(dim_run, capsys):
    from eval import dim_probes

    cfg, objective, step = dim_probes.load_encoder_run(dim_run, random_init=True)
    assert step == 0
    state = objective.nets.state_dict()
    assert STEP0 and state.keys() == STEP0.keys()
    for k, v in STEP0.items():
        assert torch.equal(v, state[k]), k
    _, trained, _ = dim_probes.load_encoder_run(dim_run)
    assert not all(torch.equal(v, trained.nets.state_dict()[k]) for k, v in STEP0.items())  # it did train
    assert dim_probes.main(["--run", str(dim_run), "--random-init", "--probes", "svm", "--layers", "y",
                            "--no-append", *CHEAP]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["settings"]["random_init"] and result["settings"]["step"] == 0


def test_dim_probes_cli_rejects_unknown_probe(dim_run, capsys):
    from eval import dim_probes

    assert dim_probes.main(["--run", str(dim_run), "--probes", "svn", "--no-append"]) == 2
    assert "unknown probe 'svn'" in capsys.readouterr().err


@pytest.mark.skipif(not (ROOT / "configs" / "supervised_digits.yaml").is_file(),
                    reason="configs/supervised_digits.yaml not written yet")
def test_dim_probes_cli_on_a_supervised_run(tmp_path, capsys):
    from arena.trainer import train
    from eval import dim_probes

    train(tiny("supervised_digits", tmp_path, "model.width=0.125", "train.batch_size=32", "train.steps=2"))
    capsys.readouterr()  # the trainer's own output
    assert dim_probes.main(["--run", str(tmp_path), "--probes", "svm,mlp", *CHEAP]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["settings"]["objective"] == "supervised" and set(result["mlp"]) == {"conv", "fc", "y"}


def test_neighbours_cli_writes_grids_and_loss_maps(dim_run, tmp_path):
    from PIL import Image

    from eval import neighbours

    out = tmp_path / "nn.png"
    assert neighbours.main(["--run", str(dim_run), "--run", str(dim_run), "--out", str(out), "--k", "3"]) == 0
    assert Image.open(out).size[0] > 100
    lm = tmp_path / "lm.png"
    assert neighbours.main(["--run", str(dim_run), "--loss-map", "--out", str(lm), "--n", "3",
                            "--batch", "16"]) == 0
    assert lm.is_file()


def test_ablation_cli_trains_probes_and_draws_each_cell(tmp_path, capsys):
    from eval import ablation

    out = tmp_path / "heat.png"
    args = ["--config", "dim_l_digits", "--alpha", "0,1", "--beta", "0,1", "--steps", "1", "--out", str(out),
            "--runs-root", str(tmp_path / "cells"), "--svm-runs", "1", "--mine-steps", "5", "--ndm-steps", "5",
            "--max-train", "128", "--max-test", "64", "--device", "cpu", *TINY_DIM]
    assert ablation.main(args) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    cells = {(c["alpha"], c["beta"]): c for c in record["cells"]}
    assert cells[(0.0, 0.0)]["skipped"]
    for key in [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]:
        assert {"svm_y", "ndm_y", "mine_y"} <= set(cells[key])
    assert (tmp_path / "cells" / "a1_b1_g0.1" / "checkpoints").is_dir() and out.is_file()
    capsys.readouterr()
    assert ablation.main(args) == 0  # a second call reuses the trained cells
    assert "measured before with the same settings; kept" in capsys.readouterr().err  # nor probed again
    assert ablation.main([*args[:7], "2", *args[8:]]) == 0  # --steps 2: beside the 1-step runs, which stay
    beside = [p.name for p in (tmp_path / "cells").iterdir() if p.name.startswith("a1_b0_g0.1-")]
    assert len(beside) == 1 and "a1_b0_g0.1 holds a run of another config (train.steps: 1 there, 2 now)" \
        in capsys.readouterr().err
    assert (tmp_path / "cells" / "a1_b0_g0.1" / "checkpoints" / "checkpoint-000001").is_dir()
