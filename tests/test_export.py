"""eval.export: programs that torch alone loads (no toolkit on the path) give the toolkit's outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from arena.data import to_float
from arena.runs import load_run
from arena.trainer import train
from eval import export as X
from tests.helpers import tiny

DIM = ["data.resolution=16", "model.width=0.125", "model.y_dim=8", "model.mi_units=64", "train.batch_size=8",
       "train.steps=2", "train.checkpoint_every=2"]
IE = ["data.resolution=16", "model.width=8", "model.z_dim=8", "train.batch_size=8", "train.steps=2",
      "train.checkpoint_every=2", "train.sample_every=100", "objective.ema_bn_batches=2"]

# Runs in `python -I -S` (isolated: no PYTHONPATH, no user site, no .pth files, so no editable
# install of the toolkit, not even the script's folder on sys.path) from an empty folder, with
# torch's own site-packages folder as the one path added: only torch is there to load the files.
CLEAN = """
import sys
sys.path.append(sys.argv.pop(1))
import torch
try:
    import arena
    sys.exit("the toolkit is importable here")
except ImportError:
    pass
for k, program in enumerate(sys.argv[1:]):  # each program's input k.pt -> output out-k.pt
    model = torch.export.load(program).module()
    torch.save(model(torch.load(f"{k}.pt", weights_only=True)), f"out-{k}.pt")
"""


def run_clean(tmp_path, *calls):
    """[program(x) for each (program, x)], computed by torch alone in one fresh isolated interpreter."""
    folder = tmp_path / "clean"
    folder.mkdir(exist_ok=True)
    for k, (_, x) in enumerate(calls):
        torch.save(x, folder / f"{k}.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    site = os.path.dirname(os.path.dirname(torch.__file__))
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", CLEAN, site, *(str(p) for p, _ in calls)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(folder / f"out-{k}.pt", weights_only=True) for k in range(len(calls))]


def test_exported_encoder_loads_without_the_toolkit_and_matches(tmp_path):
    run = tmp_path / "run"
    train(tiny("dim_l_digits", run, *DIM))
    (run / "metrics.jsonl").write_text('{"step": 2, "svm": {"y": {"mean": 55.5}}, "settings": {"runs": 1}}\n')
    assert X.main(["--run", str(run), "--out", str(tmp_path / "out")]) == 0
    _, objective, _ = load_run(run)
    x = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)  # not the traced batch size
    want = objective.features(to_float(x))
    got8, got = run_clean(tmp_path, (tmp_path / "out" / "model_uint8.pt2", x), (tmp_path / "out" / "model.pt2", x / 255))
    for k in ("conv", "fc", "y"):
        torch.testing.assert_close(got8[k], want[k], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["kind"] == "encoder" and card["resolution"] == 16 and card["channels"] == 1
    assert card["layers"] == {k: [v.shape[1]] for k, v in want.items()}
    assert card["config"]["model"]["y_dim"] == 8 and card["step"] == 2
    assert card["figures"] == {"svm/y/mean": {"value": 55.5, "step": 2}}
    # the critics are not part of the encoder's file
    n_encoder = sum(p.numel() for p in objective.encoder.parameters())
    n_all = sum(p.numel() for p in objective.nets.parameters())
    assert (tmp_path / "out" / "model.pt2").stat().st_size < 4 * n_encoder + 4 * (n_all - n_encoder)


def test_exported_generator_loads_without_the_toolkit_and_matches(tmp_path):
    run = tmp_path / "run"  # the IE; the GANs' generators are the same nets behind the same generate()
    train(tiny("ie_digits", run, *IE))
    assert X.main(["--run", str(run), "--out", str(tmp_path / "out")]) == 0
    _, objective, _ = load_run(run)
    z = objective.latent(3, torch.Generator().manual_seed(1))
    want = (objective.generate(z, ema=True) + 1) / 2
    (got,) = run_clean(tmp_path, (tmp_path / "out" / "model.pt2", z))
    torch.testing.assert_close(got, want.clamp(0, 1), rtol=1e-5, atol=1e-5)
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["kind"] == "generator" and card["z_dim"] == 8 and card["files"] == {"model.pt2": "latents"}


def test_export_of_an_objective_without_encoder_or_generator_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("prior_match_digits", run, "train.steps=1", "train.checkpoint_every=1"))
    assert X.main(["--run", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "neither generates images nor has an encoder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_of_a_vae_writes_its_decoder_as_the_generator(tmp_path):
    run = tmp_path / "run"  # the comparison models generate with a net named otherwise than G
    train(tiny("vae_digits", run, "model.width=0.125", "model.y_dim=8", "model.decoder_width=8",
               "train.batch_size=8", "train.steps=2", "train.checkpoint_every=2", "train.sample_every=100"))
    assert X.main(["--run", str(run), "--out", str(tmp_path / "out")]) == 0
    _, objective, _ = load_run(run)
    z = objective.latent(3, torch.Generator().manual_seed(1))  # not the traced batch size
    want = (objective.generate(z) + 1) / 2
    (got,) = run_clean(tmp_path, (tmp_path / "out" / "model.pt2", z))
    torch.testing.assert_close(got, want.clamp(0, 1), rtol=1e-5, atol=1e-5)
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["kind"] == "generator" and card["z_dim"] == 8


def test_an_aae_card_names_its_prior_and_whether_the_decoder_is_an_ema_copy(tmp_path):
    run = tmp_path / "run"  # samples come from the prior the codes were matched to; EMA of the encoder only
    train(tiny("aae_digits", run, "model.width=0.125", "model.y_dim=8", "model.decoder_width=8",
               "train.batch_size=8", "train.steps=2", "train.checkpoint_every=2", "train.sample_every=100",
               "objective.prior.name=uniform", "objective.prior.low=-1", "train.ema={encoder: 0.9}"))
    assert X.main(["--run", str(run), "--out", str(tmp_path / "out")]) == 0
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["input"] == "z float32 [B, 8], uniform on [-1, 1]^d"
    assert card["ema"] is False  # the exported decoder is the trained one: it has no EMA copy


def test_card_figures_skip_probes_of_the_untrained_encoder(tmp_path):
    rows = [{"step": 60, "svm": {"y": {"mean": 90.0}}, "settings": {"random_init": False}},
            {"step": 0, "svm": {"y": {"mean": 70.0}}, "settings": {"random_init": True}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert X.run_figures(tmp_path) == {"svm/y/mean": {"value": 90.0, "step": 60}}
