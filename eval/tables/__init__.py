"""Paper tables as data: what each row trains, what fills each cell, what the paper printed.

A `Table` has column groups (the paper's datasets, e.g. CIFAR10 | CIFAR100) and rows
(models). A row names, per group, the run that fills it (`RunSpec`: a config from
configs/ plus overrides) or nothing (a method this toolkit does not implement), and
the paper's numbers for that group exactly as printed (strings, e.g. "53.83 ± 0.62").
Every column names the measure that fills it:

    mlp/<layer>, svm/<layer>     eval.probes' MLP / linear SVM probe on conv, fc or y
    semi/conv                    semi-supervised fine-tuning (eval.probes.semi_probe)
    msssim/y, mine/y             decoder MS-SSIM, MINE estimate of I(X; Y)
    ndm/sigmoid(y), ndm/y        neural dependency measure with / without the sigmoid
    ndm/sigmoid(z), ndm/z        the same on a VAE's posterior sample z
    classifier                   a supervised run's own test accuracy
    isc, fid, kid                eval.fidelity's IS / FID / KID

`eval.reproduce` trains the runs and fills the cells; this package holds no code that
touches a model, so the transcription can be read (and checked) on its own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from arena.registry import ConfigError, Registry, suggest

PROBE_MEASURES = ("mlp/conv", "mlp/fc", "mlp/y", "svm/conv", "svm/fc", "svm/y", "semi/conv", "msssim/y",
                  "mine/y", "ndm/sigmoid(y)", "ndm/y", "ndm/sigmoid(z)", "ndm/z")
GENERATOR_MEASURES = ("isc", "fid", "kid")
MEASURES = (*PROBE_MEASURES, "classifier", *GENERATOR_MEASURES)
MODES = ("train", "random", "real")


@dataclass(frozen=True)
class Column:
    label: str  # as the paper prints it, e.g. "fc (1024)"
    measure: str  # one of MEASURES


@dataclass(frozen=True)
class Group:
    name: str  # the paper's column group, e.g. "CIFAR10"
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class RunSpec:
    """What fills a row in one group. mode 'train': train `config` (+ overrides) and
    measure the run; 'random': measure the config's encoder at step 0 (no training);
    'real': measure the dataset itself (IS / FID of the held-out split against train)."""

    config: str
    overrides: tuple[str, ...] = ()
    name: str = ""  # run directory name; default: the config name (set it when overrides change the model)
    mode: str = "train"

    @property
    def run_name(self) -> str:
        return self.name or self.config


@dataclass(frozen=True)
class Row:
    name: str  # for --rows, e.g. "dim_l_nce"
    label: str  # as the paper prints it, e.g. "DIM(L) (NCE)"
    runs: dict[str, RunSpec] = field(default_factory=dict)  # group -> run; empty = not implemented
    paper: dict[str, tuple[str | None, ...]] = field(default_factory=dict)  # group -> one entry per column
    measures: dict[str, str] = field(default_factory=dict)  # column label -> measure, where it differs
    note: str = ""

    @property
    def implemented(self) -> bool:
        return bool(self.runs)

    def measure(self, column: Column) -> str | None:
        """The measure of this row's cell in `column` (None: the row has no value there)."""
        if column.label in self.measures:
            return self.measures[column.label] or None
        return column.measure


@dataclass(frozen=True)
class Table:
    name: str  # for the command line, e.g. "table1"
    title: str
    source: str  # where the paper numbers come from
    groups: tuple[Group, ...]
    rows: tuple[Row, ...]
    probe: dict = field(default_factory=dict)  # eval.dim_probes.ProbeSettings fields for this table
    num_samples: int = 50000  # generated images for IS / FID / KID
    notes: tuple[str, ...] = ()

    @property
    def has_paper(self) -> bool:
        return any(r.paper for r in self.rows)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def check(self) -> None:
        """The transcription is well formed: one paper entry per column, known measures and groups."""
        names = [r.name for r in self.rows]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate row names")
        for g in self.groups:
            for c in g.columns:
                if c.measure not in MEASURES:
                    raise ValueError(f"{self.name}/{g.name}/{c.label}: unknown measure {c.measure!r}")
        for r in self.rows:
            for gname, values in r.paper.items():
                g = self.group(gname)
                if len(values) != len(g.columns):
                    raise ValueError(f"{self.name}/{r.name}/{gname}: {len(values)} paper values for "
                                     f"{len(g.columns)} columns")
                for v in values:
                    if v is not None:
                        parse_number(v)
            for gname, spec in r.runs.items():
                self.group(gname)
                if spec.mode not in MODES:
                    raise ValueError(f"{self.name}/{r.name}: unknown mode {spec.mode!r}")
            for label, m in r.measures.items():
                if m and m not in MEASURES:
                    raise ValueError(f"{self.name}/{r.name}/{label}: unknown measure {m!r}")


_NUMBER = re.compile(r"^\s*(-?\d*\.?\d+)\s*(?:±\s*(\d*\.?\d+))?\s*$")


def parse_number(text: str) -> dict:
    """'53.83 ± 0.62' -> {'mean': 53.83, 'std': 0.62}; '75.39' -> {'mean': 75.39, 'std': None}."""
    m = _NUMBER.match(text)
    if not m:
        raise ValueError(f"not a number as the paper prints it: {text!r}")
    return {"mean": float(m.group(1)), "std": float(m.group(2)) if m.group(2) else None}


TABLES: Registry[Table] = Registry("table")


def register(table: Table) -> Table:
    table.check()
    TABLES.register(table.name)(table)
    return table


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())  # "Table 1" -> "table1"


def get_table(name: str) -> Table:
    from . import digits, paper  # noqa: F401  (register their tables)

    by_key = {_key(n): n for n in TABLES.names()}
    if _key(name) in by_key:
        return TABLES.get(by_key[_key(name)])
    return TABLES.get(name, key="TABLE")  # raises with the closest name


def table_names() -> list[str]:
    from . import digits, paper  # noqa: F401

    return TABLES.names()


def select_rows(table: Table, spec: str | None) -> list[tuple[Row, str]]:
    """--rows 'a,b' -> [(row, group)]: a row name picks all its groups, a run name
    (e.g. dim_l_nce_cifar10) the one group it fills. None / '' = every row."""
    pairs = [(r, g.name) for r in table.rows for g in table.groups if g.name in r.runs or g.name in r.paper]
    if not spec:
        return pairs
    by_run = {r.runs[g].run_name: (r, g) for r, g in pairs if g in r.runs}
    chosen: list[tuple[Row, str]] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if token in by_run:
            picked = [by_run[token]]
        elif any(r.name == token for r in table.rows):
            picked = [(r, g) for r, g in pairs if r.name == token]
        else:
            valid = [r.name for r in table.rows] + sorted(by_run)
            raise ConfigError(f"--rows: table {table.name} has no row '{token}'{suggest(token, valid)}; "
                              f"rows: {', '.join(r.name for r in table.rows)} (or a run name: "
                              f"{', '.join(sorted(by_run))})")
        chosen += [p for p in picked if p not in chosen]
    return chosen
