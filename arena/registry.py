"""Name -> thing lookups that fail loudly, and the one error type for bad input."""
from __future__ import annotations

import difflib
import sys
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad input from the user: a config key, a registry name, a path, a shape."""


def cli_error(err: Exception, code: int = 2) -> int:
    """A command line's answer to bad input: 'error: ...' on stderr, and the exit status to
    return (2 for a ConfigError, the argparse convention)."""
    print(f"error: {err}", file=sys.stderr)
    return code


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close choice exists, else ''."""
    choices = [str(c) for c in choices]
    folded = {c.lower(): c for c in reversed(choices)}  # case aside: `d` finds player `D`
    close = difflib.get_close_matches(str(name).lower(), list(folded), n=1, cutoff=0.5)
    return f" (did you mean '{folded[close[0]]}'?)" if close else ""


class Registry(Generic[T]):
    """A dict of named entries; `get` names the config key and the valid choices on a miss
    (and `hint`, where the entries come from, if given)."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self.hint = hint

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str, key: str | None = None) -> T:
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} '{name}'{suggest(name, self._entries)}; "
                f"valid choices: {', '.join(sorted(self._entries))}{f' ({self.hint})' if self.hint else ''}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
