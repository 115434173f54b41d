"""benchmarks/gpu_throughput.py runs on the CPU with --tiny and prints its table."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from tests.helpers import ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_throughput_prints_one_row_per_case_and_precision(capsys):
    bench = load_script()
    autotune = torch.backends.cudnn.benchmark
    rows = bench.main(["--tiny", "--steps", "3", "--only", "nscp64,dimL32", "--busy-steps", "0"])
    assert [(r["tag"], r["precision"]) for r in rows] == [("nscp64", "no"), ("nscp64", "bf16"),
                                                         ("dimL32", "no"), ("dimL32", "bf16")]
    for r in rows:
        assert "error" not in r, r
        assert r["steps_per_s"] > 0 and r["images_per_s"] == pytest.approx(r["steps_per_s"] * r["batch"])
        assert r["finite"]
    table = ("| case |" + capsys.readouterr().out.split("\n| case |", 1)[1]).splitlines()  # after "device: ..."
    assert table[0].startswith("| case | config | px | batch | precision | steps/s | images/s | bf16/fp32")
    assert len(table) == 2 + len(rows)
    assert table[3].split("|")[8].strip() != "-"  # bf16 row: its ratio to the fp32 row of the same run
    assert torch.backends.cudnn.benchmark == autotune  # put back: later tests keep their kernels


def test_gpu_throughput_rejects_unknown_cases():
    with pytest.raises(SystemExit):
        load_script().main(["--only", "nope"])
