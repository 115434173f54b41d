"""The one experiment driver: a grid of run specs -> each run trained, resumed or reused
(arena.runs.ensure_trained) -> measured on all processes -> one record per spec -> a
JSON file and a Markdown file, rewritten whole after every record.

    results = Results(Path("out.json"), head={"steps": 600}, field="cells", render=to_markdown)
    failed = run_specs(specs, on_main(measure), results, measure_key={"samples": 360}, say=log)

`eval.reproduce`, `eval.ablation`, `eval.gen_ablation`, `eval.figure8`, `eval.figure12`,
`eval.figure14` and `eval.baselines_digits` are specs, measures and plots over it. A
results file keeps the records of earlier calls made with the same settings (`head`), so
a grid can be filled a few specs at a time and a stopped command rerun the same way
finishes the work: finished runs are reused, a stopped one resumes, and a record whose
`measure_key` is unchanged is not measured again.
"""
from __future__ import annotations

import hashlib
import json
import re
import reprlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from arena.checkpoint import final_dir
from arena.cli import ENDINGS, exit_status
from arena.config import Config, read_config_text
from arena.distributed import Processes, processes
from arena.images import atomic_file
from arena.registry import ConfigError
from arena.runs import RunState, ensure_trained, load_run, plan_run
from arena.schema import read_yaml_text
from arena.stops import NonFiniteLoss

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")
MAX_GRID_BYTES = 1 << 20  # a grid file is a few lines; anything larger is not one


@dataclass
class Spec:
    """One run of a grid and what its record starts with. cfg None: nothing to train (a
    measure of the data itself, or of an encoder at step 0)."""

    key: str  # the record's name: a cell, a table row
    cfg: Config | None
    record: dict = field(default_factory=dict)
    measures: str = ""  # what is measured, for the log


# ---------------------------------------------------------------------------- inputs


def short(value) -> str:
    """A bounded repr: a grid's value may be a huge structure built from YAML aliases."""
    return reprlib.repr(value)


def safe_name(name, what: str) -> str:
    """A name from a grid or table that becomes a directory name: letters, digits and
    _ . + = - only, not starting with a dot (no '/', no '..', nothing hidden)."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ConfigError(f"{what}: {short(name)} cannot name a run directory; use letters, digits and _ . + = - "
                          f"(no '/', no '..', not starting with '.')")
    return name


def read_yaml_mapping(path: str | Path, flag: str) -> dict:
    """A small YAML file whose top level is a mapping, or a ConfigError naming flag and file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag}: {p} is not a file")
    if p.stat().st_size > MAX_GRID_BYTES:
        raise ConfigError(f"{flag} {p}: {p.stat().st_size} bytes; a grid file is at most {MAX_GRID_BYTES}")
    # read as configs are: UTF-8, and the config reader's bounds (size, nesting, aliases)
    data = read_yaml_text(read_config_text(p), f"{flag} {p}", typed=True)
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} {p}: the top level must be a mapping of keys, not a {type(data).__name__}")
    return data


def string_list(value, what: str) -> list[str]:
    """A grid's list of KEY=VALUE overrides, or a ConfigError naming `what`."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what}: expected a list of KEY=VALUE strings, got {short(value)}")
    return list(value)


def in_range(flag: str, value: int, top: int) -> int:
    """A count flag from 1 to top, or a ConfigError naming it (checked before any training)."""
    if not 1 <= value <= top:
        raise ConfigError(f"{flag} must be from 1 to {top}, got {value}")
    return value


def choose(text: str, valid, flag: str, where: str = "") -> list[str]:
    """A comma-separated subset of `valid` (empty: all of it), or a ConfigError naming the
    unknown names and the choices; `where` says where the choices come from."""
    valid = list(valid)
    chosen = [name for name in text.split(",") if name] or valid
    unknown = [name for name in chosen if name not in valid]
    if unknown:
        raise ConfigError(f"{flag}: {', '.join(unknown)} unknown{where}; choose from {', '.join(valid)}")
    return chosen


def output_file(path: str | Path, flag: str) -> Path:
    """--out as a file path: refused when it is a directory (before any training)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag}: {p} is a directory; name a file (e.g. {p / 'results.json'})")
    if p.parent.exists() and not p.parent.is_dir():
        raise ConfigError(f"{flag}: {p.parent} is not a directory")
    return p


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; a row shorter than the header (a skipped run's) is padded with empty cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([*map(str, row), *[""] * (len(header) - len(row))]) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- results


def write_atomic(path: Path, text: str) -> None:
    """Written whole to a temporary file, then renamed: a reader (or a kill) never sees half a file."""
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text)


class Results:
    """The records of one experiment, written as `path` (JSON: head + records under `field`)
    and, with `render`, beside it as .md. Records of an earlier call are kept when its head
    equals this one's in every key of `compare` (default: all of head); a file of other
    settings is replaced (`say` tells), a file that is not such a results file is an error."""

    def __init__(self, path: Path, head: dict, field: str = "records", key: str = "key",
                 render: Callable[[dict], str] | None = None, compare=None, say=print, command: str = "this command"):
        self.path, self.head, self.field, self.key, self.render = path, head, field, key, render
        self.md = path.with_suffix(".md") if render else None
        self.records: dict[str, dict] = {}
        self.order: list[str] = []
        compare = list(head) if compare is None else compare
        if path.exists():
            try:
                earlier = json.loads(path.read_text())
                same = all(earlier.get(k) == head.get(k) for k in compare)
                # rows without a key are placeholders (a table's 'not run' rows): nothing to keep
                self.records = {r[key]: r for r in earlier[field] if key in r} if same else {}
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ConfigError(f"--out {path}: not a results file of {command}; name another file") from None
            if not same:
                say(f"{path} holds results of other settings ({', '.join(compare)}): replacing them")

    def put(self, key: str, record: dict, say=print) -> None:
        """A skipped record never replaces a measured one (a wrong --runs-root loses nothing)."""
        old = self.records.get(key)
        if "skipped" in record and old is not None and "skipped" not in old:
            say(f"{key}: {record['skipped']}; keeping its earlier result in {self.path}")
            return
        self.records[key] = {self.key: key, **record}

    def data(self) -> dict:
        keys = [k for k in self.order if k in self.records] + [k for k in self.records if k not in self.order]
        return {**self.head, "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                self.field: [self.records[k] for k in keys]}

    def write(self) -> dict:
        data = self.data()
        write_atomic(self.path, json.dumps(data, indent=1) + "\n")
        if self.md is not None:
            write_atomic(self.md, self.render(data))
        return data


# ---------------------------------------------------------------------------- processes


def main_then_all(procs: Processes, fn, marker: Path):
    """Run fn on every process (it may use collectives); the other processes then wait for
    the main one by polling `marker`, not in a collective: the main process's part (probes,
    torch-fidelity) may outlast a collective's timeout.

    An error fn raises on any process (Ctrl-C included) is held until every process has
    passed the closing barrier, so none waits for ever; then the process that raised raises
    it again and the others the first error (a ConfigError as a ConfigError: every process
    ends with its message). A process killed outright ends the whole job (accelerate launch
    stops the others), so the poll needs no deadline."""
    if procs.world == 1:
        return fn()
    if procs.main:
        marker.unlink(missing_ok=True)
    procs.barrier()
    out, raised = None, None
    try:
        out = fn()
    except BaseException as err:  # noqa: BLE001 - re-raised below, after the barrier
        raised = err
    if procs.main:
        write_atomic(marker, "done")
    else:
        while not marker.is_file():
            time.sleep(2.0)
    procs.barrier()
    if procs.main:  # every process has seen it
        marker.unlink(missing_ok=True)
    mine = None if raised is None else (isinstance(raised, ConfigError), f"{type(raised).__name__}: {raised}")
    errors = procs.gather_objects(mine)
    if raised is not None:
        raise raised
    for error in errors:
        if error is not None:
            is_config, message = error
            raise ConfigError(message) if is_config else RuntimeError(message)
    return out


# ---------------------------------------------------------------------------- the driver


def _train(spec: Spec, train: bool, hooks, say) -> tuple[RunState | None, str]:
    """-> (the run's state, '' or why it has no measurement)."""
    if spec.cfg is None:
        return None, ""
    if not train:
        state = plan_run(spec.cfg)
        why = f"not trained to step {state.steps} under {state.run_dir} (--no-train)"
        return state, "" if state.how == "reuse" else why
    try:
        return ensure_trained(spec.cfg, hooks(spec.cfg) if hooks else (), say=lambda m: say(f"{spec.key}: {m}")), ""
    except NonFiniteLoss as err:
        return None, f"diverged: {err}"


def _measure_key(measure_key, spec: Spec, state: RunState | None):
    """What the measurement of `spec` depends on, as JSON reads it back (tuples become lists)."""
    if callable(measure_key):
        key = measure_key(spec, state)
    else:  # None, or settings that go with the run's directory and length
        key = measure_key and {"run_dir": str(state.run_dir), "step": state.steps, **measure_key}
    return json.loads(json.dumps(key))


# what run_specs adds to a spec's record: the run and this call's work on it
RUN_FIELDS = ("run_dir", "trained", "train_seconds", "measure_seconds", "measure_key")


def run_specs(specs: list[Spec], measure, results: Results, *, train: bool = True, hooks=None,
              measure_key=None, say=print) -> list[str]:
    """Each spec: ensure trained (or, train=False, reuse only), measure on every process
    (`measure(spec, state, procs)` -> dict on the main process, None elsewhere; see
    `on_main`), record, write. -> the keys left unmeasured (not trained, diverged).

    measure_key: what a measurement depends on, a dict of settings (with the run's
    directory and step) or a function (spec, state) -> key; an earlier record with the
    same key is kept instead of measured again, unless this call trained the run (a run
    directory removed and trained again holds new weights at the same step). None: every
    call measures again."""
    procs = processes()
    say = say if procs.main else (lambda msg: None)
    results.order = [s.key for s in specs] + [k for k in results.order if k not in {s.key for s in specs}]
    sync = results.path.parent / f".{results.path.name}.sync"  # main_then_all's marker files
    failed, trained_dirs = [], set()  # the run dirs this call trained (a run may serve several specs)
    for spec in specs:
        state, skipped = _train(spec, train, hooks, say)
        record = dict(spec.record)
        if state is not None:
            record.update(run_dir=str(state.run_dir), trained=state.how)
            if state.seconds:
                record["train_seconds"] = round(state.seconds, 1)
        if skipped:
            failed.append(spec.key)
            if procs.main:
                results.put(spec.key, {**record, "skipped": skipped}, say)
                results.write()
            continue
        key = _measure_key(measure_key, spec, state)
        old = results.records.get(spec.key, {})
        if state is not None and state.how != "reuse":  # new weights under the same dir and step
            trained_dirs.add(str(state.run_dir))
        trained_now = state is not None and str(state.run_dir) in trained_dirs  # by this spec or one before
        if key is not None and not trained_now and "skipped" not in old and old.get("measure_key") == key:
            say(f"{spec.key}: measured before with the same settings; kept")
            continue
        say(f"{spec.key}: measuring {spec.measures}".rstrip())
        t0 = time.perf_counter()
        marker = sync / hashlib.sha1(spec.key.encode()).hexdigest()
        out = main_then_all(procs, lambda: measure(spec, state, procs), marker)
        if procs.main:
            record.update(out, measure_seconds=round(time.perf_counter() - t0, 1))
            if key is not None:
                record["measure_key"] = key
            results.put(spec.key, record, say)
            results.write()
    if procs.main and sync.is_dir() and not any(sync.iterdir()):
        sync.rmdir()
    return failed


def on_main(measure: Callable[[Spec, RunState | None], dict]):
    """A measure that runs on the main process only (probes, torch-fidelity on one device),
    as run_specs calls it: the other processes return None and wait."""
    return lambda spec, state, procs: measure(spec, state) if procs.main else None


def load_final(state: RunState, device="cpu"):
    """-> (cfg, objective, step) of a run at its final checkpoint (train.steps), the nets in
    eval mode: the same weights whether this call trained the run or found it finished."""
    return load_run(state.run_dir, str(final_dir(state.run_dir, state.steps)), device)


def run_cli(name: str, body: Callable[[], int]) -> int:
    """A command's body with the core's one mapping of endings to messages and exit codes
    (arena.cli.exit_status): bad input 2, a diverged training 3, SIGTERM / Ctrl-C during
    training (the step saved) 128 + the signal, and rerunning the same command finishes
    the work; Ctrl-C elsewhere 130."""
    try:
        return body()
    except ENDINGS as err:  # with N processes the main one says it, the others only exit
        return exit_status(err, prog=name, resume_hint="; run the same command again to finish",
                           interrupted="finished records are in the results file; rerun to continue",
                           quiet=not processes().main)
