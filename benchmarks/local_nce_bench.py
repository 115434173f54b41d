"""Step time and peak memory of local NCE DIM: encode-and-dot vs concat-and-convolve critic.

One step = zero_grad, encoder forward (dcgan32, 32x32, random input), critic scores for
all N x N x L pairs, loss = -nce_mi(scores), backward through critic and encoder (no
optimizer step). Reported per (critic, batch): median step time over --steps timed steps
after one warm-up step, and peak memory:

- cuda: torch.cuda.max_memory_allocated() during the steps minus memory_allocated() before
  them (tensor memory only, not the caching allocator's reserve).
- cpu:  each case runs in a fresh child process; peak resident set size after the steps
  (getrusage ru_maxrss) minus the resident size just before the first step
  (/proc/self/statm). That is what the process really had to hold, including the
  allocator's caching and freed-but-unreturned pages, so it is an upper bound on the
  step's tensor memory (Linux only).

Usage: python benchmarks/local_nce_bench.py [--device cpu|cuda] [--width W]
       [--batches 64,128,256] [--critics encode_dot,concat_convolve] [--steps 3]
--width scales the encoder's channels and the critic's units (512 / 2048 at width 1).
Default: 1.0 on cuda, 0.125 on cpu so the run ends in a couple of minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dim.critics import build_local_critic  # noqa: E402
from dim.encoders import build_encoder, scaled  # noqa: E402
from dim.estimators import nce_mi  # noqa: E402
from eval.cli_args import count_arg, default_device, device_arg, positive_float_arg  # noqa: E402

DEFAULT_UNITS = {"encode_dot": 2048, "concat_convolve": 512}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(critic: str, batch: int, width: float, steps: int, device: str) -> dict:
    torch.manual_seed(0)
    dev = torch.device(device)
    E = build_encoder("dcgan32", channels=3, resolution=32, width=width).to(dev)
    T = build_local_critic(critic, global_dim=E.y_dim, local_channels=E.local_channels, width=width).to(dev)
    params = [*E.parameters(), *T.parameters()]
    x = torch.rand(batch, 3, 32, 32, device=dev) * 2 - 1

    def step() -> None:
        for p in params:
            p.grad = None
        out = E(x)
        loss = -nce_mi(T(out["y"], out["local"]))
        loss.backward()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    step()  # warm-up (also counted in the peak: it allocates what every step needs)
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _peak_rss_bytes()) - base
    return {"critic": critic, "batch": batch, "ms": 1000 * statistics.median(times), "peak_mb": peak / 2**20}


def _mem_available() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", type=device_arg, default=default_device())
    ap.add_argument("--width", type=positive_float_arg, default=None)
    ap.add_argument("--batches", default="64,128,256", help="comma-separated batch sizes (each >= 2)")
    ap.add_argument("--critics", default="encode_dot,concat_convolve")
    ap.add_argument("--steps", type=count_arg(1), default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = str(args.device)
    on_cpu = torch.device(args.device).type == "cpu"
    width = args.width if args.width is not None else (0.125 if on_cpu else 1.0)
    critics = [c for c in args.critics.split(",") if c]
    if not critics or set(critics) - set(DEFAULT_UNITS):
        ap.error(f"--critics: choose from {', '.join(DEFAULT_UNITS)}; got {args.critics!r}")
    batch_size = count_arg(2)
    try:
        batches = [batch_size(b) for b in args.batches.split(",")]
    except argparse.ArgumentTypeError as err:
        ap.error(f"--batches: {err}")

    if args.child:  # one case, JSON on stdout
        print(json.dumps(run_case(critics[0], batches[0], width, args.steps, args.device)))
        return 0

    E = build_encoder("dcgan32", channels=3, resolution=32, width=width)
    c_l, h_l, w_l = E.local_shape
    L = h_l * w_l
    print(f"local NCE DIM step (forward + backward, encoder + critic), dcgan32 32x32, device={args.device}, "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}")
    print(f"width={width}" + (" (CPU default; the paper's nets are width 1: pass --width 1)"
                              if on_cpu and args.width is None else ""))
    print(f"local map {c_l}x{h_l}x{w_l} (L={L}), Y={E.y_dim}; critic units: "
          + ", ".join(f"{c}={scaled(DEFAULT_UNITS[c], width)}" for c in critics))
    if on_cpu:
        print("peak memory = peak RSS during the steps minus RSS before them, fresh process per case")
    else:
        print("peak memory = torch.cuda.max_memory_allocated during the steps minus allocated before")
    print(f"{'critic':<16}{'batch':>6}{'step ms':>11}{'peak MB':>10}")
    for critic in critics:
        for batch in batches:
            if on_cpu:
                # The concat critic's hidden tensors are [N, N, L, U] floats; the step keeps
                # about five of them. Skip a case that would not fit instead of being OOM-killed.
                if critic == "concat_convolve":
                    need = 5 * batch * batch * L * scaled(512, width) * 4
                    avail = _mem_available()
                    if avail is not None and need > 0.7 * avail:
                        print(f"{critic:<16}{batch:>6}   skipped: needs ~{need / 2**30:.1f} GiB, "
                              f"{avail / 2**30:.1f} GiB available")
                        continue
                cmd = [sys.executable, __file__, "--child", "--device", args.device, "--width", str(width),
                       "--batches", str(batch), "--critics", critic, "--steps", str(args.steps)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{critic:<16}{batch:>6}   failed (exit {proc.returncode}): "
                          f"{proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                try:
                    r = run_case(critic, batch, width, args.steps, args.device)
                except torch.cuda.OutOfMemoryError:
                    print(f"{critic:<16}{batch:>6}   out of memory")
                    torch.cuda.empty_cache()
                    continue
                torch.cuda.empty_cache()
            print(f"{r['critic']:<16}{r['batch']:>6}{r['ms']:>11.1f}{r['peak_mb']:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
