"""eval.reproduce and eval.tables: the paper's tables as data, errors before any training,
the dry run's budget, and the digits table end to end (train, resume, skip, measure, write)."""
import json
from pathlib import Path

import pytest
import torch

from arena.registry import ConfigError
from eval import experiment, reproduce
from eval.row_measures import Measuring
from eval.tables import TABLES, get_table, parse_number, select_rows, table_names
from eval.tables.report import complete_rows, markdown

TINY = ["--scale", "0.01", "--measure-scale", "0.01", "--no-progress"]


def _args(tmp_path, *extra):
    return ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), *extra]


# ---------------------------------------------------------------------------- the tables as data


def test_every_table_is_well_formed_and_names_existing_configs():
    from arena.config import resolve_config_path

    assert {"table1", "table2", "table3", "table4", "table10", "digits"} <= set(table_names())
    for name in table_names():
        t = TABLES.get(name)
        t.check()
        for row in t.rows:
            for spec in row.runs.values():
                resolve_config_path(spec.config)  # raises for a config that does not exist


def test_paper_numbers_are_the_printed_ones():
    # Spot checks against the paper's text, one per table and group, including the
    # oddities kept as printed (52.2, 1.442, .68, the sigmoid / no-sigmoid NDM pair).
    t1 = get_table("table1")
    assert t1.row("dim_l_nce").paper == {"CIFAR10": ("75.21", "75.57", "69.13"),
                                         "CIFAR100": ("49.74", "47.72", "41.61")}
    assert t1.row("dim_g").paper["CIFAR10"][0] == "52.2"
    assert t1.row("supervised").paper == {"CIFAR10": ("75.39", None, None), "CIFAR100": ("42.27", None, None)}
    t2 = get_table("Table 2")  # names are forgiving about case and spaces
    assert t2.row("nat").paper["Tiny ImageNet"] == ("13.70", "11.62", "1.20")
    assert t2.row("dim_l_jsd").paper["STL-10 (random crop pretraining)"] == ("72.86", "70.85", "65.93", "76.96")
    t3 = get_table("table3")
    assert t3.row("dim_lg").paper["CIFAR10"] == ("57.55 ± 1.442", "45.56 ± 4.18", "18.63 ± 4.79", "0.53",
                                                 "101.65", "0.5", "22.89")
    # the comparison models' single NDM, beside the NDM without the sigmoid (ndm_eval.py's default)
    assert t3.row("vae").paper["CIFAR10"][-2:] == (None, "1.62")
    assert t3.row("bigan").paper["CIFAR10"][-2:] == (None, "24.49")
    t4 = get_table("table4")
    assert [c.label for c in t4.groups[0].columns] == ["Y(64)", "fc (1024)", "conv"]  # the paper's order
    assert t4.row("coord_occlude").paper["CIFAR100"] == ("45.96", "48.00", "48.72")
    t10 = get_table("table10")
    assert [r.paper["Tiny ImageNet"] for r in t10.rows] == [
        ("31.21 ± .68", "4.03"), ("7.41 ± .10", "55.15"), ("8.65 ± .08", "40.17"), ("8.38 ± 0.18", "42.30")]
    assert parse_number("31.21 ± .68") == {"mean": 31.21, "std": 0.68}
    assert parse_number("52.2") == {"mean": 52.2, "std": None}


def test_comparison_models_train_their_configs_and_show_paper_numbers_only_as_paper(tmp_path):
    t = get_table("table1")
    assert all(t.row(n).implemented for n in ("vae", "aae", "bigan", "nat"))
    data = {"command": "python -m eval.reproduce table1", "scale": 1, "measure_scale": 1, "updated": "now",
            "notes": [], "rows": complete_rows(t, {})}
    by_key = {(r["row"], r["group"]): r for r in data["rows"]}
    assert by_key[("vae", "CIFAR10")]["status"] == "not run"
    assert by_key[("dim_l_nce", "CIFAR10")]["status"] == "not run"
    for r in data["rows"]:
        for c in r["cells"].values():
            assert c["measured"] is None and c["difference"] is None
    md = markdown(t, data)
    assert "not implemented" not in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| DIM(L) (NCE) |"))
    # | model | run | step | conv | paper | Δ | ...: the paper's number sits in the paper column only
    assert [c.strip() for c in line.split("|")[4:7]] == ["not run", "75.21", ""]
    line = next(ln for ln in md.splitlines() if ln.startswith("| VAE |"))
    assert [c.strip() for c in line.split("|")[4:7]] == ["not run", "60.71", ""]


def test_rows_are_picked_by_row_or_run_name():
    t = get_table("table1")
    assert [(r.name, g) for r, g in select_rows(t, "dim_g")] == [("dim_g", "CIFAR10"), ("dim_g", "CIFAR100")]
    assert [(r.name, g) for r, g in select_rows(t, "dim_l_nce_cifar100")] == [("dim_l_nce", "CIFAR100")]
    assert len(select_rows(t, None)) == 2 * len(t.rows)


def test_probe_calls_ask_each_probe_only_at_its_own_layers(tmp_path):
    digits = get_table("digits")
    calls = Measuring(digits, 0.1, "cpu").probe_settings({c.label: c.measure for c in digits.groups[0].columns})
    # the MLP at conv, fc, Y (+ NDM on Y), the SVM at Y only: two calls, not an SVM at conv and fc
    assert [(s.probes, s.layers) for s in calls] == [(("mlp", "ndm"), ("conv", "fc", "y")), (("svm",), ("y",))]
    assert calls[0].mlp_epochs == 5 and calls[0].ndm_steps == 100 and calls[1].runs == 1  # x 0.1, at least 1
    t3 = get_table("table3")
    (call,) = Measuring(t3, 0.1, "cpu").probe_settings({c.label: c.measure for c in t3.groups[0].columns})
    assert call.probes == ("svm", "msssim", "mine", "ndm") and call.layers == ("conv", "fc", "y")


# ---------------------------------------------------------------------------- errors before training


def test_unknown_table_and_row_get_the_closest_name(tmp_path, capsys):
    assert reproduce.main(["tabel1", *_args(tmp_path)]) == 2
    assert "did you mean 'table1'" in capsys.readouterr().err
    assert reproduce.main(["table1", "--rows", "dim_l_ncee", *_args(tmp_path)]) == 2
    assert "did you mean 'dim_l_nce'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_missing_dataset_names_the_row_and_the_path_before_any_training(tmp_path, capsys):
    from tests.fixtures import make_cifar10

    make_cifar10(tmp_path / "data")  # CIFAR-10 is there, CIFAR-100 is not
    code = reproduce.main(["table1", "--rows", "dim_g", "--data-root", str(tmp_path / "data"), *_args(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "row 'dim_g' (CIFAR100, config dim_g_cifar100)" in err
    assert str(tmp_path / "data" / "cifar-100-python") in err and "nothing was trained" in err
    assert not (tmp_path / "runs").exists()  # not even the CIFAR-10 row started


def test_missing_inception_weights_stop_a_generation_table_before_training(tmp_path, capsys, monkeypatch):
    from tests.fixtures import make_tinyimagenet

    make_tinyimagenet(tmp_path / "data")
    monkeypatch.delenv("DIM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code = reproduce.main(["table10", "--rows", "ie", "--data-root", str(tmp_path / "data"), *_args(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "row 'ie' (Tiny ImageNet, config ie_tinyimagenet)" in err
    assert "weights-inception-2015-12-05-6726825d.pth" in err
    assert not (tmp_path / "runs").exists()


def test_a_run_dir_of_another_config_is_kept_and_the_row_trains_beside_it(tmp_path, capsys):
    run = tmp_path / "runs" / "dim_l_digits"
    (run / "checkpoints" / "checkpoint-000002").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-000002" / "state.pt").write_bytes(b"")
    args = reproduce.build_parser().parse_args(["digits", "--rows", "dim_l", *_args(tmp_path)])
    (e,) = reproduce.plan(get_table("digits"), select_rows(get_table("digits"), "dim_l"), args)
    e.cfg.objective.alpha = 0.5  # a different experiment wrote this run dir
    (run / "config.yaml").write_text(e.cfg.to_yaml())
    (e,) = reproduce.plan(get_table("digits"), select_rows(get_table("digits"), "dim_l"), args)
    assert e.state == "fresh" and Path(e.cfg.run.dir).name.startswith("dim_l_digits-")
    assert reproduce.main(["digits", "--rows", "dim_l", "--dry-run", *_args(tmp_path)]) == 0
    assert f"run.dir={e.cfg.run.dir}" in capsys.readouterr().out


# ---------------------------------------------------------------------------- dry run


def test_dry_run_prints_commands_and_a_budget_from_measured_speeds(tmp_path, capsys):
    assert reproduce.main(["digits", "--dry-run", "--scale", "0.5", *_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    speeds = reproduce.load_throughput()
    rate = speeds["dim_l_digits"]["steps_per_s"]
    assert (f"python train.py --config dim_l_digits run.dir={tmp_path / 'runs' / 'scale-0.5' / 'dim_l_digits'} "
            f"train.steps=250") in out
    assert f"250 steps / {rate:g} steps/s = {reproduce.fmt_seconds(250 / rate)}" in out
    assert "python -m eval.fid_is --run" in out and "python -m eval.dim_probes --run" in out
    assert not (tmp_path / "runs").exists()


def test_dry_run_counts_a_run_shared_by_two_column_groups_once(tmp_path, capsys):
    """The VAE's one run is probed (representation) and sampled (generation): one budget."""
    assert reproduce.main(["digits", "--dry-run", "--rows", "vae", *_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    rate = reproduce.load_throughput()["vae_digits"]["steps_per_s"]
    assert out.count(f"500 steps / {rate:g} steps/s") == 1
    assert "budget: the run of [vae/digits: representation], counted there" in out
    assert f"\n\n[reproduce] training budget: {reproduce.fmt_seconds(500 / rate)} for the rows" in out


def test_dry_run_says_unknown_without_a_measured_speed_and_lists_data_problems(tmp_path, capsys):
    code = reproduce.main(["table1", "--dry-run", "--rows", "dim_l_nce_cifar10", "--data-root",
                           str(tmp_path / "nodata"), *_args(tmp_path)])
    out = capsys.readouterr().out
    assert code == 2  # the data is missing: said, and the exit status says so
    assert "781000 steps x unknown steps/s" in out and "PROBLEM" in out and "cifar-10-batches-py" in out
    reproduce.main(["table10", "--dry-run", "--rows", "ie", "--inception-weights", str(tmp_path / "w.pth"),
                    *_args(tmp_path)])
    out = capsys.readouterr().out
    assert f"--metrics isc,fid --inception-weights {tmp_path / 'w.pth'}" in out  # the command as it must be run


# ---------------------------------------------------------------------------- end to end


def test_digits_table_end_to_end_resumes_skips_and_writes_results(tmp_path, capsys, monkeypatch):
    from arena.trainer import train
    from arena.checkpoint import checkpoint_dirs

    monkeypatch.setenv("DIM_FIDELITY_CACHE", str(tmp_path / "fidelity"))
    rows = "dim_l,supervised,random,real,ie"
    argv = ["digits", "--rows", rows, *TINY, *_args(tmp_path)]
    # A run that stopped: 2 of its 5 steps saved (the config on disk is the full run's).
    args = reproduce.build_parser().parse_args(argv)
    table = get_table("digits")
    (e,) = reproduce.plan(table, select_rows(table, "dim_l"), args)
    assert e.cfg.train.steps == 5 and e.state == "fresh"
    full = e.cfg.to_yaml()
    e.cfg.train.steps = 2
    train(e.cfg)
    (Path(e.cfg.run.dir) / "config.yaml").write_text(full)

    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    runs = tmp_path / "runs" / "scale-0.01"
    assert f"dim_l/digits: representation: {runs / 'dim_l_digits'}: training 5 steps, resuming at step 2" in out
    assert f"ie/digits: generation: {runs / 'ie_digits'}: training 2 steps, from scratch" in out
    assert [p.name for p in checkpoint_dirs(runs / "dim_l_digits")][-1] == "checkpoint-000005"
    results = tmp_path / "results"
    data = json.loads((results / "digits-x0.01-m0.01.json").read_text())
    got = {r["row"]: r for r in data["rows"]}
    for name in rows.split(","):
        assert got[name]["status"] == "measured", name
    for name in ("dim_g", "nsgan_cp", "wgan_gp"):
        assert got[name]["status"] == "not run"
    cells = got["dim_l"]["cells"]
    assert got["dim_l"]["step"] == 5 and got["random"]["step"] == 0
    assert all(0 <= cells[c]["measured"] <= 100 for c in ("conv", "fc", "Y"))
    assert set(cells["SVM (Y)"]["measured"]) == {"mean", "std"}
    assert got["supervised"]["cells"]["conv"]["measure"] == "classifier"
    assert got["supervised"]["cells"]["fc"]["measured"] is None
    assert got["ie"]["cells"]["FID"]["measured"] > got["real"]["cells"]["FID"]["measured"] >= 0
    assert got["ie"]["settings"]["generator"]["num_samples"] == 20
    md = (results / "digits-x0.01-m0.01.md").read_text()
    assert md in out  # what was printed is what was written
    assert "| Random encoder | dim_l_digits-random | 0 (random init) |" in md
    assert "| NS-GAN-CP | nsgan_cp_digits | - | not run | not run |" in md
    assert "paper" not in md.split("## digits: representation")[1]  # no paper columns: the paper has no digits

    # Restarted: nothing is trained or measured again.
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert ": training " not in out and ": measuring " not in out and "[arena]" not in out
    assert f"dim_l/digits: representation: {runs / 'dim_l_digits'}: finished at step 5; reused, not trained" in out
    assert "ie/digits: generation: measured before with the same settings; kept" in out
    assert json.loads((results / "digits-x0.01-m0.01.json").read_text())["rows"] == data["rows"]


class _ThreadDist:
    """Two 'processes' as threads: main_then_all only needs world, main, barrier and
    gather_objects."""

    shared: dict = {}

    def __init__(self, rank, barrier):
        self.rank, self.world, self.main, self._barrier = rank, 2, rank == 0, barrier

    def barrier(self):
        self._barrier.wait(timeout=20)

    def gather_objects(self, obj):
        self.shared[self.rank] = obj
        self.barrier()
        out = [self.shared[r] for r in range(self.world)]
        self.barrier()
        return out


@pytest.mark.parametrize("who_fails, failure", [
    (0, ValueError("torch-fidelity said no")),  # not a ConfigError / RuntimeError
    (1, OSError("disk full")),
    (0, KeyboardInterrupt()),
    (1, ConfigError("--probes: no such probe")),
])
def test_main_then_all_never_leaves_a_process_waiting(tmp_path, monkeypatch, who_fails, failure):
    import threading
    monkeypatch.setattr(experiment.time, "sleep", lambda s: threading.Event().wait(0.01))
    barrier, results = threading.Barrier(2), {}

    def run(rank):
        def fn():
            if rank == who_fails:
                raise failure
            return rank
        try:
            results[rank] = ("ok", experiment.main_then_all(_ThreadDist(rank, barrier), fn, tmp_path / "m.json"))
        except BaseException as err:  # noqa: BLE001 - the test records what each rank saw
            results[rank] = (type(err).__name__, str(err))

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a rank is still waiting"
    assert not barrier.broken
    # the process that raised raises its own error again; every other process learns it
    other, message = 1 - who_fails, f"{type(failure).__name__}: {failure}"
    assert results[who_fails] == (type(failure).__name__, str(failure))
    if isinstance(failure, ConfigError):  # a message on every process, not a traceback
        assert results[other] == ("ConfigError", message)
    else:
        assert results[other] == ("RuntimeError", message)
    assert not (tmp_path / "m.json.tmp").exists()


# ---------------------------------------------------------------------------- the comparison models


BASELINES = ("vae", "aae", "bigan", "nat")


def test_the_comparison_rows_plan_their_own_configs_in_tables_1_2_and_3(tmp_path):
    expect = {"table1": {"CIFAR10": "cifar10", "CIFAR100": "cifar100"},
              "table2": {"Tiny ImageNet": "tinyimagenet", "STL-10 (random crop pretraining)": "stl10"},
              "table3": {"CIFAR10": "cifar10"}}
    for name, groups in expect.items():
        t = get_table(name)
        args = reproduce.build_parser().parse_args([name, *_args(tmp_path)])
        entries = reproduce.plan(t, select_rows(t, ",".join(BASELINES)), args)
        assert len(entries) == len(BASELINES) * len(groups)
        for e in entries:
            assert e.spec.config == f"{e.row.name}_{groups[e.group]}" and e.trains and e.state == "fresh"
            assert e.cfg.objective.name == e.row.name
            assert all(m is not None for m in e.measures.values())  # every column measured
    t3 = get_table("table3")
    measures = {r.name: {c.label: r.measure(c) for c in t3.groups[0].columns} for r in t3.rows}
    assert measures["vae"]["NDM (no sigmoid)"] == "ndm/z" and measures["vae"]["NDM"] == "ndm/sigmoid(z)"
    assert measures["bigan"]["NDM (no sigmoid)"] == "ndm/y" and measures["bigan"]["MS-SSIM"] == "msssim/y"
    (call,) = Measuring(t3, 0.1, "cpu").probe_settings(measures["vae"])
    assert call.ndm_layer == "z" and call.rep_layer == "y"  # MS-SSIM and MINE stay on Y = mu
    assert "not implemented" not in Path(reproduce.__file__).with_name("tables").joinpath("paper.py").read_text()


def test_table1_dry_run_lists_a_training_and_probe_command_for_every_row(tmp_path, capsys):
    code = reproduce.main(["table1", "--dry-run", "--data-root", str(tmp_path / "nodata"), *_args(tmp_path)])
    out = capsys.readouterr().out
    assert code == 2  # no CIFAR here: every row says so, and still lists its commands
    t = get_table("table1")
    for row in t.rows:
        for group, spec in row.runs.items():
            assert f"python train.py --config {spec.config} run.dir={tmp_path / 'runs' / spec.run_name}" in out
            block = out.split(f"[{row.name}/{group}]")[1].split("\n\n")[0]
            assert "measure: " in block and ("eval.dim_probes --run" in block or "classifier" in block)
    assert out.count("train: python train.py") == sum(len(r.runs) for r in t.rows) == 16
    assert "not implemented" not in out


def test_a_tiny_vae_row_measures_every_cell_with_ndm_on_its_posterior_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIM_FIDELITY_CACHE", str(tmp_path / "fidelity"))
    assert reproduce.main(["digits", "--rows", "vae", *TINY, *_args(tmp_path)]) == 0
    data = json.loads((tmp_path / "results" / "digits-x0.01-m0.01.json").read_text())
    got = {(r["row"], r["group"]): r for r in data["rows"]}
    for group in ("digits: representation", "digits: generation"):
        rec = got[("vae", group)]
        assert rec["status"] == "measured" and rec["step"] == 5
        for label, c in rec["cells"].items():
            v = c["measured"]["mean"] if isinstance(c["measured"], dict) else c["measured"]
            assert v is not None and v == v and abs(v) < float("inf"), label
    rep = got[("vae", "digits: representation")]
    assert rep["cells"]["NDM"]["measure"] == "ndm/sigmoid(z)" and rep["cells"]["NDM (no sigmoid)"]["measure"] == "ndm/z"
    assert [p["ndm_layer"] for p in rep["settings"]["probes"] if "ndm" in p["probes"]] == ["z"]


def test_ndm_reads_the_objectives_ndm_layer_and_a_missing_layer_is_a_message():
    from arena.config import load_config
    from arena.registry import ConfigError
    from eval.dim_probes import ProbeSettings, run_probes, untrained_objective

    tiny = dict(ndm_steps=5, max_train=64, max_test=32, batch_size=32)
    for code, layer in (("sample", "z"), ("mu", "y")):
        cfg = load_config("vae_digits", [f"objective.ndm_code={code}"])
        vae = untrained_objective(cfg)
        assert vae.ndm_layer == layer
        results, settings = run_probes(cfg, vae, ProbeSettings(probes=("ndm",), layers=("y",), **tiny))
        assert set(results["ndm"]) == {layer, f"sigmoid({layer})"}
    # mu and the posterior sample are different codes: a sample adds sigma * eps to mu
    f = vae.features(torch.rand(8, 1, 16, 16) * 2 - 1)
    assert f["z"].shape == f["y"].shape and not torch.equal(f["z"], f["y"])
    # --ndm-layer overrides the objective's choice; an encoder without z names the layer and what it has
    results, _ = run_probes(cfg, vae, ProbeSettings(probes=("ndm",), layers=("y",), ndm_layer="z", **tiny))
    assert set(results["ndm"]) == {"z", "sigmoid(z)"}
    dim_cfg = load_config("dim_l_digits")
    with pytest.raises(ConfigError, match=r"layer\(s\) z: .* gives conv, fc, y"):
        run_probes(dim_cfg, untrained_objective(dim_cfg), ProbeSettings(probes=("ndm",), ndm_layer="z", **tiny))


def test_a_rows_note_is_the_tables_text_and_printed_once_for_all_its_groups():
    from eval.tables.report import empty_record

    t = get_table("digits")
    vae = t.row("vae")
    stale = {f"vae/{g}": {**empty_record(t, vae, g, "measured"), "note": "an older wording"} for g in vae.runs}
    data = {"command": "c", "scale": 1, "measure_scale": 1, "updated": "now", "notes": [],
            "rows": complete_rows(t, stale)}
    assert {r["note"] for r in data["rows"] if r["row"] == "vae"} == {vae.note}
    notes = [ln for ln in markdown(t, data).splitlines() if ln.startswith("- VAE")]
    assert notes == [f"- VAE (digits: representation, digits: generation): {vae.note}"]
