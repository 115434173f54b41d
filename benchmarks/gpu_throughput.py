"""Training throughput of the paper-scale configs on procedural data: one table.

    python benchmarks/gpu_throughput.py                      # every case, 300 steps each (a GPU)
    python benchmarks/gpu_throughput.py --only nscp64,dimL32 --steps 200
    python benchmarks/gpu_throughput.py --tiny --steps 6     # shrunken nets: runs on a CPU in seconds

Each case trains one config with arena's trainer on `shapes` data (no dataset needed)
in fp32 and in bf16, in this one process, and reports steps/s and images/s (steps/s x
batch) over the steps after the first fifth (warm-up: cudnn autotuning, allocator),
the bf16 / fp32 ratio measured in the same run, peak device memory, and the GPU busy
fraction: summed CUDA kernel time / wall time over a further `--busy-steps` steps under
the PyTorch profiler (on a CPU there is no device to be busy: "-").
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass

import torch

import arena.prior_match  # noqa: F401
import dim  # noqa: F401
import implicit_gen  # noqa: F401
from arena.config import load_config
from arena.registry import ConfigError
from arena.trainer import train
from eval.cli_args import count_arg


@dataclass
class Case:
    tag: str
    config: str
    resolution: int
    batch: int
    tiny: tuple[str, ...]  # overrides that shrink nets and images for a CPU check of the script


GAN_TINY = ("model.arch=resnet32", "data.resolution=16", "model.width=8", "model.z_dim=8", "data.num_images=64")
DIM_TINY = ("model.width=0.125", "model.mi_units=64", "objective.prior.hidden=[16]", "data.num_images=64")
CASES = [
    Case("ie64", "ie_tinyimagenet", 64, 64, GAN_TINY),
    Case("nscp64", "nsgan_cp_tinyimagenet", 64, 64, GAN_TINY),
    Case("nscp64_b256", "nsgan_cp_tinyimagenet", 64, 256, GAN_TINY),
    Case("wgp64", "wgan_gp_tinyimagenet", 64, 64, GAN_TINY),
    Case("dimL32", "dim_l_nce_cifar10", 32, 64, DIM_TINY),
    Case("dimL64", "dim_l_nce_tinyimagenet", 64, 64, DIM_TINY),
]
PRECISIONS = ("no", "bf16")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def config(case: Case, precision: str, run_dir: str, steps: int, log_every: int, tiny: bool, extra: list[str]):
    batch = 4 if tiny else case.batch
    return load_config(case.config, [
        "data.name=shapes", f"data.resolution={case.resolution}", f"train.batch_size={batch}",
        f"run.dir={run_dir}", f"train.steps={steps}", f"train.log_every={log_every}",
        "train.checkpoint_every=1000000000", "train.sample_every=1000000000", "eval.every=0",
        f"train.mixed_precision={precision}", "train.progress=false", *(case.tiny if tiny else ()), *extra])


def measure(case: Case, precision: str, steps: int, busy_steps: int, tiny: bool, extra: list[str]) -> dict:
    warm = max(1, steps // 5)
    row = {"tag": case.tag, "config": case.config, "px": case.resolution, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(case, precision, f"{tmp}/run", warm + steps, warm, tiny, extra)
        row["batch"], row["px"] = cfg.train.batch_size, cfg.data.resolution
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        train(cfg)
        lines = [json.loads(line) for line in open(f"{tmp}/run/metrics.jsonl")]
        timed = [(b["step"] - a["step"], b["steps_per_s"]) for a, b in zip(lines, lines[1:])]
        row["steps_per_s"] = sum(n for n, _ in timed) / sum(n / rate for n, rate in timed)
        row["images_per_s"] = row["steps_per_s"] * cfg.train.batch_size
        row["finite"] = all(v == v and abs(v) != float("inf") for line in lines for v in line.values())
        if torch.cuda.is_available():
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if busy_steps > 0:
                row["busy"] = busy_fraction(config(case, precision, f"{tmp}/busy", busy_steps, busy_steps, tiny, extra))
    return row


def busy_fraction(cfg) -> float:
    """Summed CUDA kernel time / wall time of a short run (its setup included, as busy.py)."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        train(cfg)
        sync()
        wall = time.perf_counter() - t
    kernel_s = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
    return kernel_s / wall


def table(rows: list[dict], device: str) -> str:
    out = [f"device: {device}",
           "| case | config | px | batch | precision | steps/s | images/s | bf16/fp32 | peak GiB | GPU busy |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    fp32 = {r["tag"]: r["steps_per_s"] for r in rows if r["precision"] == "no" and "steps_per_s" in r}
    for r in rows:
        if "error" in r:
            out.append(f"| {r['tag']} | {r['config']} | {r['px']} | - | {r['precision']} | error: {r['error']} |"
                       " | | | |")
            continue
        ratio = f"{r['steps_per_s'] / fp32[r['tag']]:.2f}" if r["precision"] != "no" and r["tag"] in fp32 else "-"
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-"
        busy = f"{100 * r['busy']:.0f}%" if "busy" in r else "-"
        flag = "" if r["finite"] else " (non-finite loss)"
        out.append(f"| {r['tag']} | {r['config']} | {r['px']} | {r['batch']} | {r['precision']} | "
                   f"{r['steps_per_s']:.2f} | {r['images_per_s']:.0f} | {ratio} | {peak} | {busy}{flag} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=count_arg(1), default=300, help="timed steps per case (plus a fifth for warm-up)")
    parser.add_argument("--busy-steps", type=count_arg(0), default=30,
                        help="profiled steps for the GPU busy fraction (0 = skip)")
    parser.add_argument("--only", default="", help="comma-separated case tags: " + ",".join(c.tag for c in CASES))
    parser.add_argument("--precision", default=",".join(PRECISIONS), help="comma-separated: no,bf16")
    parser.add_argument("--tiny", action="store_true", help="shrink nets and batches (a CPU check of the script)")
    parser.add_argument("--json", default="", help="also append one JSON line per case to this file")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every case, e.g. train.cuda_graph=true")
    args = parser.parse_args(argv)
    only = [t for t in args.only.split(",") if t]
    unknown = set(only) - {c.tag for c in CASES}
    if unknown:
        parser.error(f"--only: unknown case(s) {', '.join(sorted(unknown))}; cases: {', '.join(c.tag for c in CASES)}")
    precisions = [p for p in args.precision.split(",") if p]
    if not precisions or set(precisions) - {"no", "bf16", "fp16"}:
        parser.error(f"--precision: choose from no, bf16, fp16; got {args.precision!r}")
    try:  # a misspelled override fails here, once, not as an error row of every case
        load_config(CASES[0].config, args.overrides)
    except ConfigError as err:
        parser.error(f"overrides: {err}")
    if args.json:
        try:  # before the runs, not after them
            open(args.json, "a").close()
        except OSError as err:
            parser.error(f"--json: cannot append to {args.json}: {err.strerror or err}")
    autotune, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
    try:
        return run_cases(args, only, precisions)
    finally:
        torch.backends.cudnn.benchmark = autotune  # as it was (the tests call main in-process)


def run_cases(args, only: list[str], precisions: list[str]) -> list[dict]:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows = []
    for case in (c for c in CASES if not only or c.tag in only):
        for precision in precisions:
            try:
                row = measure(case, precision, args.steps, args.busy_steps, args.tiny, args.overrides)
            except Exception as err:  # report it in the table and go on with the next case
                row = {"tag": case.tag, "config": case.config, "px": case.resolution, "precision": precision,
                       "error": f"{type(err).__name__}: {err}"[:200]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"device": device, **row}) + "\n")
    print(table(rows, device))
    return rows


if __name__ == "__main__":
    main()
