"""The one mapping from how a training command ended to its message and exit status."""
from __future__ import annotations

import signal

import pytest

from arena.cli import ENDINGS, exit_status
from arena.registry import ConfigError
from arena.stops import NonFiniteLoss, NonFiniteWeights, Stopped


@pytest.mark.parametrize("err,code,message", [
    (ConfigError("train.steps: must be >= 1, got 0"), 2, "error: train.steps: must be >= 1, got 0"),
    (NonFiniteLoss("loss 'D/loss' became non-finite"), 3, "error: loss 'D/loss' became non-finite"),
    (NonFiniteWeights("weights became non-finite"), 3, "error: weights became non-finite"),
    (Stopped("stopped by SIGTERM after step 4", signal.SIGTERM), 143, "[arena] stopped by SIGTERM after step 4"),
    (Stopped("stopped by SIGINT after step 4", signal.SIGINT), 130, "[arena] stopped by SIGINT after step 4"),
    (KeyboardInterrupt(), 130, "[arena] interrupted; nothing saved beyond the newest checkpoint"),
])
def test_each_ending_has_its_status_and_message(err, code, message, capsys):
    assert isinstance(err, ENDINGS)
    assert exit_status(err) == code
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == message


def test_a_command_names_itself_and_says_how_to_continue(capsys):
    stop = Stopped("stopped by SIGTERM after step 2", signal.SIGTERM)
    assert exit_status(stop, prog="reproduce", resume_hint="; run the same command again to resume") == 143
    assert capsys.readouterr().err.strip() == \
        "[reproduce] stopped by SIGTERM after step 2; run the same command again to resume"
    assert exit_status(KeyboardInterrupt(), prog="reproduce", interrupted="finished rows are kept") == 130
    assert capsys.readouterr().err.strip() == "[reproduce] interrupted; finished rows are kept"


@pytest.mark.parametrize("err,code", [(ConfigError("x"), 2), (NonFiniteLoss("x"), 3),
                                      (Stopped("x", signal.SIGTERM), 143), (KeyboardInterrupt(), 130)])
def test_quiet_processes_print_nothing_and_agree_on_the_status(err, code, capsys):
    assert exit_status(err, quiet=True) == code
    assert capsys.readouterr().err == ""


def test_anything_else_is_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        exit_status(ZeroDivisionError("a bug"))


def test_train_py_returns_the_mapped_status(tmp_path, capsys):
    import train

    assert train.main(["--config", "prior_match_digits", f"run.dir={tmp_path}", "train.steps=0"]) == 2
    assert "error: train.steps: must be >= 1, got 0" in capsys.readouterr().err
