"""How a command that trains ends: one mapping from the way it stopped to its message
and exit status, for train.py and the experiment commands alike."""
from __future__ import annotations

import sys

from .registry import ConfigError, cli_error
from .stops import NonFiniteLoss, Stopped

# What such a command catches at its top and hands to `exit_status`.
ENDINGS = (ConfigError, NonFiniteLoss, KeyboardInterrupt)


def exit_status(err: BaseException, prog: str = "arena", resume_hint: str = "",
                interrupted: str = "nothing saved beyond the newest checkpoint", quiet: bool = False) -> int:
    """Print what happened on stderr and return the exit status:

        ConfigError (bad input)                      2    'error: ...' (argparse's convention)
        NonFiniteLoss (training diverged)            3    'error: ...'
        Stopped (SIGTERM / SIGINT; step saved)       128 + signal (143, 130), the shell's convention,
                                                          after every process shut down together
        any other KeyboardInterrupt (nothing saved)  130

    `prog` tags the stop messages ('[prog] ...'); `resume_hint` follows a Stopped message
    (e.g. '; run the same command again to resume'); `interrupted` says what is kept after
    an interrupt; `quiet` prints nothing (a process other than the main one). Anything
    else is raised again."""
    if isinstance(err, Stopped):
        from .distributed import shutdown  # every process stopped after the same step

        shutdown()
        if not quiet:
            print(f"[{prog}] {err}{resume_hint}", file=sys.stderr)
        return 128 + err.signum
    if isinstance(err, KeyboardInterrupt):
        if not quiet:
            print(f"[{prog}] interrupted; {interrupted}", file=sys.stderr)
        return 130
    if isinstance(err, (ConfigError, NonFiniteLoss)):
        code = 2 if isinstance(err, ConfigError) else 3
        return code if quiet else cli_error(err, code)
    raise err
