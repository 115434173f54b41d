"""Reproduce a paper table with one command: train every row, measure it, print it beside the paper.

    python -m eval.reproduce table1 --data-root /data [--scale 0.01] [--rows dim_l_nce,dim_g] [--dry-run]
    accelerate launch -m eval.reproduce table10 --data-root /data --inception-weights ~/weights-inception.pth
    python -m eval.reproduce digits            # the CPU table: a few minutes, no data to fetch

Tables (eval.tables): table1, table2, table3, table4, table10 (the paper's numbers) and
digits. For each selected row the runner

1. trains the row's config (configs/NAME.yaml plus the row's overrides) into
   RUNS/NAME through arena.runs.ensure_trained: a finished run is reused, a stopped
   one resumed, so the command can be killed and rerun; a run dir written by a
   different config is kept and the row trains beside it (RUNS/NAME-<config hash>);
2. measures it with the column's measure (eval.dim_probes.run_probes for the probes,
   eval.fidelity for IS / FID), reusing a measurement of the same step and settings
   already in the results file (eval.experiment drives it);
3. writes OUT/TABLE.json and OUT/TABLE.md (measured, paper, measured - paper) after
   every row, and prints the Markdown at the end.

--scale S multiplies every row's training steps (runs go to RUNS/scale-S/, results
to TABLE-xS); --measure-scale M the probes' epochs / steps and the number of
generated samples. --dry-run prints the equivalent commands and the training budget
(steps x the steps/s measured in docs/throughput.json, "unknown" where there is no
figure) and trains nothing. Datasets, Inception weights, row and table names are all
checked before any training. Under `accelerate launch`, every training uses all the
processes; the probes run on the main process and the generator's samples are drawn
by all of them.

Every row of the paper's tables trains, the comparison models (VAE, AAE, BiGAN, NAT:
configs `{row}_{dataset}`) like the DIM rows. Paper numbers appear only in the "paper"
columns; a cell without a measurement says "not run" (a row naming no run would say
"not implemented"; no shipped table has one).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from arena.config import Config, load_config
from arena.data import build_dataset, dataset_signature
from arena.distributed import processes, shutdown
from arena.objective import OBJECTIVES
from arena.registry import ConfigError
from arena.runs import plan_run

from . import experiment as X
from .cli_args import device_arg
from .dim_probes import encoder_objectives, probe_command
from .row_measures import Measuring, scaled
from .tables import GENERATOR_MEASURES, PROBE_MEASURES, Row, RunSpec, Table, get_table, select_rows
from .tables.report import complete_rows, fmt_scale, markdown

ROOT = Path(__file__).resolve().parent.parent
THROUGHPUT = ROOT / "docs" / "throughput.json"
MAX_STEPS = 10**9  # a scaled step count past this is a typo, not a plan


def say(msg: str) -> None:
    print(f"[reproduce] {msg}", flush=True)


# ---------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Entry:
    """One cell group to fill: a row in one column group, with its resolved run."""

    row: Row
    group: str
    spec: RunSpec | None  # None: not implemented
    cfg: Config | None = None
    done: int = 0  # steps in the run dir's latest checkpoint
    how: str = ""  # arena.runs.plan_run's decision: fresh, resume, reuse
    measures: dict[str, str] = dataclasses.field(default_factory=dict)  # column label -> measure

    @property
    def key(self) -> str:
        return f"{self.row.name}/{self.group}"

    @property
    def trains(self) -> bool:
        return self.spec is not None and self.spec.mode == "train"

    @property
    def state(self) -> str:
        if self.spec is None:
            return "not implemented"
        if not self.trains:
            return "no training"
        return {"reuse": "finished", "resume": "resume", "fresh": "fresh"}[self.how]


def runs_root(args) -> Path:
    root = Path(args.runs)
    return root if args.scale == 1 else root / f"scale-{fmt_scale(args.scale)}"


def results_stem(table: Table, args) -> str:
    stem = table.name
    if args.scale != 1:
        stem += f"-x{fmt_scale(args.scale)}"
    if args.measure_scale != 1:
        stem += f"-m{fmt_scale(args.measure_scale)}"
    return stem


def row_context(e: Entry) -> str:
    cfg = f", config {e.spec.config}" if e.spec else ""
    return f"row '{e.row.name}' ({e.group}{cfg})"


def plan(table: Table, pairs, args) -> list[Entry]:
    """The entries of the chosen rows, each run's config resolved and (for trained rows)
    arena.runs.plan_run's decision: fresh, resume or reuse, and the directory it uses."""
    common = [f"train.progress={'false' if args.no_progress else 'true'}"]
    common += [f"data.root={args.data_root}"] if args.data_root else []
    common += [f"eval.inception_weights={args.inception_weights}"] if args.inception_weights else []
    entries = []
    for row, group in pairs:
        e = Entry(row, group, row.runs.get(group))
        e.measures = {c.label: m for c in table.group(group).columns if (m := row.measure(c))}
        if e.spec is not None:
            try:
                X.safe_name(e.spec.run_name, "run name")
                e.cfg = load_config(e.spec.config, [*e.spec.overrides, f"run.dir={runs_root(args) / e.spec.run_name}",
                                                    *common])
                e.cfg.train.steps = scaled(e.cfg.train.steps, args.scale)
                if e.cfg.train.steps > MAX_STEPS:
                    raise ConfigError(f"--scale {args.scale:g} gives {e.cfg.train.steps} steps (at most {MAX_STEPS})")
                if e.trains:
                    state = plan_run(e.cfg)
                    e.done, e.how = state.done, state.how
            except ConfigError as err:
                raise ConfigError(f"{row_context(e)}: {err}") from None
        entries.append(e)
    return entries


def preflight(entries: list[Entry]) -> dict[str, str]:
    """Every error a run could hit before its first step, for all rows, before any training:
    the datasets (both splits), the feature extractor of IS / FID, measures the objective
    cannot give. -> {entry key: problem} (empty when all is well)."""
    problems, datasets = {}, {}
    for e in entries:
        try:
            _preflight_one(e, datasets)
        except ConfigError as err:
            problems[e.key] = f"{row_context(e)}: {err}"
    return problems


def _build_both_splits(data) -> None:
    """Both splits of a dataset, any failure to read them a ConfigError (a damaged file in a
    dataset folder is the user's input, whatever the loader raised)."""
    for split in ("train", "test"):
        try:
            build_dataset(data, split)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - named and reported for the row, never a traceback
            raise ConfigError(f"data: the {split} split of {data.name} under {data.root} could not be read "
                              f"({type(err).__name__}: {err})") from None


def _preflight_one(e: Entry, checked: dict) -> None:
    from .fidelity import resolve_features

    if e.cfg is None:
        return
    wanted = set(e.measures.values())
    generates = OBJECTIVES.get(e.cfg.objective.name, key="objective.name").generates
    if e.spec.mode == "train" and wanted & set(GENERATOR_MEASURES) and not generates:
        raise ConfigError(f"IS / FID need a generator; objective '{e.cfg.objective.name}' has none")
    if wanted & set(PROBE_MEASURES) and e.cfg.objective.name not in encoder_objectives():
        raise ConfigError(f"the probes need an encoder objective with features() ({', '.join(encoder_objectives())}), "
                          f"not '{e.cfg.objective.name}'")
    data = dataclasses.replace(e.cfg.data, augment=False)
    sig = json.dumps(dataset_signature(data, "train"), sort_keys=True)
    if sig not in checked:  # the same dataset failed (or passed) for an earlier row
        try:
            _build_both_splits(data)
            checked[sig] = ""
        except ConfigError as err:
            checked[sig] = str(err)
    if checked[sig]:
        raise ConfigError(checked[sig])
    if wanted & set(GENERATOR_MEASURES) or e.cfg.eval.every > 0:
        resolve_features(e.cfg.eval.features, e.cfg.data, e.cfg.eval.inception_weights)


# ---------------------------------------------------------------------------- dry run


def load_throughput() -> dict:
    return json.loads(THROUGHPUT.read_text()).get("configs", {}) if THROUGHPUT.is_file() else {}


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def train_command(e: Entry, world: int) -> str:
    launcher = "accelerate launch train.py" if world > 1 else "python train.py"
    mine = [o for o in e.spec.overrides if not o.startswith("train.steps=")]  # the scaled steps follow
    parts = [launcher, "--config", e.spec.config, *mine, f"run.dir={e.cfg.run.dir}", f"train.steps={e.cfg.train.steps}"]
    if e.cfg.data.name not in ("digits", "shapes"):
        parts.append(f"data.root={e.cfg.data.root}")
    if e.cfg.eval.inception_weights:
        parts.append(f"eval.inception_weights={e.cfg.eval.inception_weights}")
    if e.state == "resume":
        parts.append("run.resume=latest")
    return " ".join(parts)


def measure_command(e: Entry, m: Measuring) -> str:
    """The commands that measure what Measuring.record measures, made from the same settings."""
    wanted = list(dict.fromkeys(e.measures.values()))
    run, parts = e.cfg.run.dir, []
    gen = [w for w in wanted if w in GENERATOR_MEASURES]
    if e.spec.mode == "real":
        parts.append(f"in-process: eval.fidelity.evaluate_real ({', '.join(wanted)} of the test split against "
                     f"the train split, features {e.cfg.eval.features})")
    elif gen:
        weights = f" --inception-weights {e.cfg.eval.inception_weights}" if e.cfg.eval.inception_weights else ""
        parts.append(f"python -m eval.fid_is --run {run} --num-samples {m.num_samples} "
                     f"--metrics {','.join(gen)}{weights}")
    parts += [probe_command(run, s, random_init=e.spec.mode == "random") for s in m.probe_settings(e.measures)]
    if "classifier" in wanted:
        parts.append("in-process: the supervised classifier's test accuracy")
    return "; ".join(parts)


def dry_run(entries: list[Entry], m: Measuring, args, world: int, problems: dict[str, str]) -> None:
    speeds, table = load_throughput(), m.table
    say(f"{table.name}: {table.title}")
    say(f"dry run (scale {fmt_scale(args.scale)}, measure scale {fmt_scale(args.measure_scale)}); "
        f"nothing is trained. Runs under {runs_root(args)}, results to "
        f"{Path(args.out) / results_stem(table, args)}.md/.json")
    known, unknown, budgeted = 0.0, [], {}  # budgeted: run dir -> the entry that trains it
    for e in entries:
        print(f"\n{e.row.label} [{e.key}]: {e.state}")
        if e.spec is None:
            print("  the paper's numbers only (no such model in this toolkit)")
            continue
        if e.key in problems:
            print(f"  PROBLEM (a real run would stop here before training): {problems[e.key]}")
        if e.trains:
            left = max(0, e.cfg.train.steps - e.done)
            if e.state != "finished":
                print(f"  train: {train_command(e, world)}")
            speed = speeds.get(e.spec.run_name) or speeds.get(e.spec.config)
            shared = budgeted.setdefault(e.cfg.run.dir, e.key)
            if shared != e.key:  # one run serves several column groups: trained (and counted) once
                print(f"  budget: the run of [{shared}], counted there")
            elif left == 0:
                print(f"  budget: done ({e.done} of {e.cfg.train.steps} steps)")
            elif speed:
                secs = left / speed["steps_per_s"]
                known += secs
                print(f"  budget: {left} steps / {speed['steps_per_s']:g} steps/s = {fmt_seconds(secs)} "
                      f"(measured on {speed['device']}, {speed['source']})")
            else:
                unknown.append(e.spec.config)
                print(f"  budget: {left} steps x unknown steps/s (no figure for {e.spec.config} in "
                      f"{THROUGHPUT.relative_to(ROOT)}) = unknown")
        elif e.spec.mode == "random":
            print(f"  no training: {e.spec.config}'s encoder at step 0")
        print(f"  measure: {measure_command(e, m)}")
    line = f"training budget: {fmt_seconds(known)} for the rows with a measured speed"
    if unknown:
        line += f"; unknown for {len(unknown)} run(s) with no measured steps/s ({', '.join(sorted(set(unknown)))})"
    print()
    say(line + "; measuring (probes, IS / FID) not included")
    if world > 1:
        say(f"{world} processes: the figures are single-process speeds")


# ---------------------------------------------------------------------------- the run


class TableResults(X.Results):
    """The records of one table, every row of it in the JSON and the Markdown."""

    def __init__(self, table: Table, path: Path, head: dict):
        self.table = table
        super().__init__(path, head, field="rows", render=lambda data: markdown(table, data),
                         compare=["table", "scale", "measure_scale"], say=say, command="eval.reproduce")

    def data(self) -> dict:
        return {**super().data(), "rows": complete_rows(self.table, self.records)}


def build_parser() -> argparse.ArgumentParser:
    from .tables import table_names

    p = argparse.ArgumentParser(prog="python -m eval.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help=f"one of {', '.join(table_names())}")
    p.add_argument("--data-root", default="", help="dataset folder for every row (default: each config's data.root)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every row's training steps")
    p.add_argument("--measure-scale", type=float, default=1.0,
                   help="multiplies the probes' epochs / steps and the number of generated samples")
    p.add_argument("--rows", default="", help="comma list of row names (or run names); default: all")
    p.add_argument("--dry-run", action="store_true", help="print the commands and the budget; train nothing")
    p.add_argument("--runs", default="runs/reproduce", help="where the runs go (default runs/reproduce)")
    p.add_argument("--out", default="results", help="where TABLE.md / TABLE.json go (default results)")
    p.add_argument("--inception-weights", default="", help="local copy of torch-fidelity's Inception weights")
    p.add_argument("--device", type=device_arg, default=None, help="for the probes (default: the main process's device)")
    p.add_argument("--no-progress", action="store_true", help="no training progress bars")
    return p


def check_args(args) -> None:
    for flag, value in (("--scale", args.scale), ("--measure-scale", args.measure_scale)):
        if not (math.isfinite(value) and 0 < value <= 1e4):
            raise ConfigError(f"{flag} must be a number in (0, 10000], got {value}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out: {args.out} is a file; name a directory for TABLE.md / TABLE.json")


def run_table(entries: list[Entry], m: Measuring, args, argv) -> int:
    """Train, measure and write every implemented entry -> the exit status (3: a row failed)."""
    from .hooks import training_hooks

    command = "python -m eval.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
    head = {"table": m.table.name, "title": m.table.title, "source": m.table.source, "scale": args.scale,
            "measure_scale": args.measure_scale, "command": command,
            "groups": [{"name": g.name, "columns": [{"label": c.label, "measure": c.measure} for c in g.columns]}
                       for g in m.table.groups], "notes": list(m.table.notes)}
    results = TableResults(m.table, Path(args.out) / f"{results_stem(m.table, args)}.json", head)
    todo = [e for e in entries if e.spec is not None]
    by_key = {e.key: e for e in todo}
    specs = [X.Spec(e.key, e.cfg if e.trains else None,
                    {"run": e.spec.run_name, "config": e.spec.config, "overrides": list(e.spec.overrides),
                     "mode": e.spec.mode, "run_dir": e.cfg.run.dir},
                    ", ".join(dict.fromkeys(e.measures.values()))) for e in todo]

    def run_dir(spec, state) -> Path:
        return state.run_dir if state is not None else Path(by_key[spec.key].cfg.run.dir)

    failed = X.run_specs(specs, lambda spec, state, procs: m.record(by_key[spec.key], run_dir(spec, state), procs),
                         results, hooks=training_hooks,  # the monitor and generator metrics a row's config asks for
                         measure_key=lambda spec, state: m.key(by_key[spec.key], run_dir(spec, state)), say=say)
    if processes().main:
        data = results.write()
        print()
        print(markdown(m.table, data), end="")
        say(f"wrote {results.md} and {results.path}")
    return 3 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return X.run_cli("reproduce", lambda: reproduce(args, argv))


def reproduce(args, argv) -> int:
    check_args(args)
    table = get_table(args.table)
    entries = plan(table, select_rows(table, args.rows), args)
    problems = preflight(entries)
    procs = processes()
    m = Measuring(table, args.measure_scale, args.device or str(procs.device))
    if args.dry_run:
        if procs.main:
            dry_run(entries, m, args, procs.world, problems)
        return 2 if problems else 0
    if problems:
        first, *rest = problems.values()
        more = f" (and {len(rest)} more row(s): {', '.join(k for k in list(problems)[1:])})" if rest else ""
        raise ConfigError(f"{first}{more}; nothing was trained")
    code = run_table(entries, m, args, argv)
    shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
