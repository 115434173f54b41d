"""Hostile but fair inputs to the metric CLIs and the benchmarks: each ends with a message
naming the flag and what is allowed, exit status 2, before anything is loaded, trained or
written; no shipped file is replaced."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from arena.registry import ConfigError
from eval import fid_is, fidelity, neighbours, sample_grid, train_features
from eval.cli_args import SEED_MAX, parse_device
from eval.features import shipped_extractors
from tests.helpers import ROOT
from tests.test_fidelity import LinearGenerator, fake_cfg
from tests.test_probes import dim_run  # noqa: F401  (a tiny trained DIM run, shared with test_probes)


def refused(capsys, main, argv, *words) -> str:
    """main(argv) ends with exit status 2 (argparse's SystemExit or cli_error's return) and
    an 'error:' on stderr holding every word."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error:" in err and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without CUDA, wherever the test runs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """fid_is / sample_grid load a linear test generator; `loaded` says whether they did."""
    G, loaded = LinearGenerator(), []

    def load(run, ckpt="latest", device="cpu"):
        loaded.append(device)
        return fake_cfg(features="digits-32"), G, 7

    monkeypatch.setattr(fid_is, "load_run", load)
    monkeypatch.setattr(sample_grid, "load_run", load)
    return G, loaded


# ---------------------------------------------------------------------------- devices


def test_a_device_is_parsed_once_for_every_cli(no_gpu):
    assert parse_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'banana' is not a device; choose cpu, cuda, cuda:N or mps"):
        parse_device("banana")
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU on this machine"):
        parse_device("cuda")
    with pytest.raises(ConfigError, match="device type 'meta' is not supported"):
        parse_device("meta")


def test_a_missing_gpu_index_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert parse_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="has 1 CUDA device"):
        parse_device("cuda:3")


@pytest.mark.parametrize("device", ["banana", "cuda"])
def test_every_metric_cli_refuses_a_device_it_cannot_use(device, no_gpu, fake_run, tmp_path, capsys):
    G, loaded = fake_run
    out = str(tmp_path / "x.png")
    for main, argv in ((fid_is.main, ["--run", str(tmp_path)]),
                       (sample_grid.main, ["--run", str(tmp_path), "--out", out]),
                       (neighbours.main, ["--run", str(tmp_path), "--out", out]),
                       (train_features.main, ["--data", "digits", "--out", str(tmp_path / "f.pt")])):
        refused(capsys, main, [*argv, "--device", device], "argument --device", f"'{device}'")
    assert loaded == [] and G.calls == 0 and not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- fid_is


def test_fid_is_names_a_features_file_that_is_not_an_extractor(tmp_path, fake_run, capsys):
    G, _ = fake_run
    files = {"text.pt": b"not a torch file", "empty.pt": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "dict.pt")  # a torch file of another kind
    torch.save({"state_dict": {}, "meta": {"in_channels": 1}}, tmp_path / "meta.pt")  # meta lacks sizes
    blob = torch.load(shipped_extractors()["digits-32"], weights_only=True)
    blob["meta"]["feature_dim"] = 10**12  # sizes that do not fit the weights (and would not fit memory)
    torch.save(blob, tmp_path / "sizes.pt")
    for name in ("text.pt", "empty.pt", "dict.pt", "meta.pt", "sizes.pt"):
        refused(capsys, fid_is.main, ["--run", str(tmp_path), "--features", str(tmp_path / name), "--device", "cpu"],
                f"{tmp_path / name}: not a weights file written by eval.train_features")
    assert G.calls == 0 and not (tmp_path / "metrics.jsonl").exists()


def test_fid_is_refuses_more_samples_than_memory_holds_before_drawing_one(tmp_path, fake_run, capsys):
    G, _ = fake_run
    refused(capsys, fid_is.main, ["--run", str(tmp_path), "--num-samples", "1000000000", "--device", "cpu"],
            "--num-samples: 1000000000 samples need about", "GiB of memory", "more than this machine's")
    assert G.calls == 0 and not (tmp_path / "metrics.jsonl").exists()


def test_the_memory_bound_counts_features_and_gathered_images(monkeypatch):
    feats = fidelity.resolve_features("digits-32")
    assert fidelity.feature_width(feats) == 128 + 10  # the classifier's features and logits
    monkeypatch.setattr(fidelity, "machine_memory", lambda: 16 * 138 * 1000)
    fidelity.check_sample_memory(1000, feats)
    with pytest.raises(ConfigError, match="1001 samples need"):
        fidelity.check_sample_memory(1001, feats)
    with pytest.raises(ConfigError, match="eval.num_samples: 1000 samples"):
        fidelity.check_sample_memory(1000, feats, image_bytes=1, key="eval.num_samples")


@pytest.mark.parametrize("flag,value,words", [
    ("--seed", str(SEED_MAX + 1), ("argument --seed", "a seed is a whole number from 0 to 2147483647")),
    ("--seed", str(2**64), ("argument --seed",)),  # torch's own limit: an overflow error deep inside
    ("--seed", "-1", ("argument --seed",)),
    ("--batch-size", "0", ("argument --batch-size", ">= 1")),
    ("--num-samples", "1", ("argument --num-samples", ">= 2")),
    ("--ema-bn-batches", "-1", ("argument --ema-bn-batches", "from 0 to 100000")),
    ("--ema-bn-batches", str(10**12), ("argument --ema-bn-batches",)),  # 10**12 forward passes: a hang
    ("--num-samples", "1e9", ("argument --num-samples", "'1e9' is not a whole number")),
])
def test_fid_is_numbers_at_the_edge(flag, value, words, tmp_path, fake_run, capsys):
    G, loaded = fake_run
    refused(capsys, fid_is.main, ["--run", str(tmp_path), flag, value], *words)
    assert loaded == [] and G.calls == 0


def test_sample_grid_bounds_the_grid(tmp_path, fake_run, capsys):
    G, _ = fake_run
    refused(capsys, sample_grid.main, ["--run", str(tmp_path), "--out", str(tmp_path / "g.png"), "--n", str(10**12)],
            "argument --n", f"from 1 to {sample_grid.MAX_IMAGES}")
    assert G.calls == 0 and not (tmp_path / "g.png").exists()


# ---------------------------------------------------------------------------- neighbours


def test_neighbours_refuses_k_zero_and_more_neighbours_than_images(dim_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "nn.png"
    refused(capsys, neighbours.main, ["--run", str(dim_run), "--out", str(out), "--k", "0"],
            "argument --k: must be a whole number >= 1, got 0")
    refused(capsys, neighbours.main, ["--run", str(dim_run), "--out", str(out), "--k", str(2**70), "--device", "cpu"],
            "--k:", "neighbours besides the query")
    assert not out.exists()


def test_neighbours_loss_map_names_a_block_too_big_for_the_images(dim_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "lm.png"
    refused(capsys, neighbours.main, ["--run", str(dim_run), "--loss-map", "--out", str(out), "--block", str(2**70),
                                      "--device", "cpu"], "--block: 1180591620717411303424 px cells leave fewer than two")
    assert not out.exists()


def test_neighbours_writes_where_it_says_or_nowhere(dim_run, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "figs"
    folder.mkdir()
    refused(capsys, neighbours.main, ["--run", str(dim_run), "--out", str(folder), "--k", "2"],
            f"--out: {folder} is a directory")
    refused(capsys, neighbours.main, ["--run", str(dim_run), "--out", str(tmp_path / "nn"), "--k", "2"],
            "does not end in .png")
    assert list(tmp_path.iterdir()) == [folder] and not list(folder.iterdir())


# ---------------------------------------------------------------------------- train_features


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained although the command line was refused")

    monkeypatch.setattr(train_features, "train", refuse)


@pytest.mark.parametrize("flag,value,words", [
    ("--batch-size", "0", ("argument --batch-size", ">= 1")),
    ("--lr", "-1", ("argument --lr", "finite number > 0")),
    ("--lr", "nan", ("argument --lr", "finite number > 0, got nan")),
    ("--lr", "inf", ("argument --lr",)),
    ("--epochs", "0", ("argument --epochs",)),
    ("--seed", str(2**64), ("argument --seed",)),
])
def test_train_features_refuses_bad_numbers_before_training(flag, value, words, tmp_path, no_training, capsys):
    refused(capsys, train_features.main, ["--data", "digits", "--out", str(tmp_path / "f.pt"), flag, value], *words)
    assert not list(tmp_path.iterdir())


def test_train_features_checks_out_before_training_and_never_replaces_a_shipped_file(tmp_path, no_training,
                                                                                     capsys):
    shipped = shipped_extractors()["digits-32"]
    before = shipped.read_bytes()
    refused(capsys, train_features.main, ["--data", "digits", "--epochs", "1"], "--out")  # no default any more
    refused(capsys, train_features.main, ["--data", "digits", "--out", str(shipped)],
            f"--out: {shipped} is a shipped feature extractor")
    refused(capsys, train_features.main, ["--data", "digits", "--out", str(tmp_path)], f"--out: {tmp_path} is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("")
    refused(capsys, train_features.main, ["--data", "digits", "--out", str(blocker / "f.pt")],
            f"--out: cannot create the folder {blocker}")
    assert shipped.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------------------- benchmarks


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,argv,words", [
    ("trainer_overhead", ["--config", "nope"], ("nope",)),
    ("trainer_overhead", ["--steps", "0"], ("argument --steps",)),
    ("trainer_overhead", ["--repeats", "0"], ("argument --repeats",)),
    ("trainer_overhead", ["train.stepz=3"], ("stepz",)),
    ("gpu_throughput", ["--steps", "0"], ("argument --steps",)),
    ("gpu_throughput", ["--precision", ""], ("--precision",)),
    ("gpu_throughput", ["--tiny", "train.stepz=3"], ("overrides:", "stepz")),
    ("gpu_throughput", ["--tiny", "--json", "/proc/no/such.jsonl"], ("--json: cannot append",)),
    ("local_nce_bench", ["--steps", "0"], ("argument --steps",)),
    ("local_nce_bench", ["--device", "banana"], ("argument --device",)),
    ("local_nce_bench", ["--batches", "64,x"], ("--batches", "'x' is not a whole number")),
    ("local_nce_bench", ["--critics", "nope"], ("--critics",)),
    ("local_nce_bench", ["--width", "0"], ("argument --width",)),
])
def test_benchmarks_refuse_bad_arguments_with_a_message(name, argv, words, capsys):
    refused(capsys, load_benchmark(name).main, argv, *words)


def test_fid_is_never_appends_through_a_symbolic_link(tmp_path, fake_run, capsys, monkeypatch):
    monkeypatch.setenv("DIM_FIDELITY_CACHE", str(tmp_path / "cache"))
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere.jsonl"
    run.mkdir()
    elsewhere.write_text("")
    (run / "metrics.jsonl").symlink_to(elsewhere)
    argv = ["--run", str(run), "--num-samples", "50", "--metrics", "isc", "--device", "cpu"]
    refused(capsys, fid_is.main, argv, f"{run / 'metrics.jsonl'} is a symbolic link (to {elsewhere})")
    assert elsewhere.read_text() == "" and fake_run[0].calls == 0  # refused before sampling
    monkeypatch.setattr(fid_is, "check_links", lambda run: None)  # a link made while the metrics ran
    refused(capsys, fid_is.main, argv, f"--run: cannot append to {run / 'metrics.jsonl'}: it is a symbolic link")
    assert elsewhere.read_text() == ""


def test_train_features_writes_through_no_planted_temporary_name(tmp_path):
    from eval.features import DomainClassifier, load_classifier, save_classifier

    out, elsewhere = tmp_path / "f.pt", tmp_path / "elsewhere"
    elsewhere.write_text("keep")
    (tmp_path / "f.pt.tmp").symlink_to(elsewhere)  # the name a fixed temporary file would have
    save_classifier(DomainClassifier(1, 8, 3, width=2, feature_dim=4), out, {"test_accuracy": 0.5})
    assert elsewhere.read_text() == "keep" and load_classifier(out)[1]["num_classes"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "f.pt", "f.pt.tmp"]


@pytest.mark.parametrize("device", ["banana", "cuda"])
def test_every_experiment_cli_refuses_a_device_it_cannot_use(device, no_gpu, tmp_path, capsys):
    """The training-and-measuring commands and export parse --device with the same type:
    refused at parse time, before any run is planned, trained or written."""
    from eval import ablation, dim_probes, export, gen_ablation, reproduce

    for main, argv in ((ablation.main, ["--config", "dim_l_digits", "--out", str(tmp_path / "h.png")]),
                       (gen_ablation.main, ["--grid", "eval/grids/ie_digits.yaml", "--out", str(tmp_path / "g.json")]),
                       (dim_probes.main, ["--run", str(tmp_path)]),
                       (export.main, ["--run", str(tmp_path), "--out", str(tmp_path / "x")]),
                       (reproduce.main, ["digits", "--out", str(tmp_path / "r")])):
        refused(capsys, main, [*argv, "--device", device], "argument --device", f"'{device}'")
    assert not list(tmp_path.iterdir())


def test_dim_probes_never_append_through_a_symbolic_link(tmp_path, dim_run, capsys):  # noqa: F811
    """A run whose metrics.jsonl is a link is refused before any probe runs; the shared
    append refuses a link made later, naming the file. Nothing outside the run changes."""
    import shutil

    from arena.rundir import append_metrics
    from eval import dim_probes

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere.jsonl"
    shutil.copytree(dim_run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "metrics.jsonl").unlink()
    elsewhere.write_text("")
    (run / "metrics.jsonl").symlink_to(elsewhere)
    refused(capsys, dim_probes.main, ["--run", str(run), "--probes", "ndm", "--device", "cpu"],
            f"{run / 'metrics.jsonl'} is a symbolic link (to {elsewhere})")
    with pytest.raises(ConfigError, match="cannot append to .*metrics.jsonl: it is a symbolic link"):
        append_metrics(run, {"step": 1})
    assert elsewhere.read_text() == ""
