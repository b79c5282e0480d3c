"""sbnn._console: exit statuses, one-message errors, --debug, and jsonargparse messages made readable."""

from __future__ import annotations

import argparse

import pytest

from sbnn._console import UsageError, console_main, help_options, readable_error

# jsonargparse 4.x's message for `--model.init_args.lrr 1` on the quickstart recipe, verbatim
UNION = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'sbnn.tasks.SpikingClassificationTask':
        Option 'lrr' is not accepted
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='lrr', val='1')"""


def test_union_message_is_shortened_to_the_problem_with_a_suggestion():
    assert readable_error(UNION) == (
        "--model: Problem with given class_path 'sbnn.tasks.SpikingClassificationTask': "
        "Option 'lrr' is not accepted (did you mean 'lr'?)"
    )


def test_unrecognized_option_gets_the_closest_known_one():
    options = help_options("  --trainer.max_epochs MAX_EPOCHS\n  --trainer.min_epochs N\n  --model CONFIG")
    assert options == ["--model", "--trainer.max_epochs", "--trainer.min_epochs"]
    message = readable_error("unrecognized arguments: --trainer.max_epoks 1", options)
    assert message == "unrecognized arguments: --trainer.max_epoks 1 (did you mean --trainer.max_epochs?)"
    assert readable_error("unrecognized arguments: --zzz 1", options) == "unrecognized arguments: --zzz 1"


def _raise(err: BaseException):
    def body(argv):
        raise err
    return body


@pytest.mark.parametrize(
    "err, status, line",
    [
        (UsageError("--limit must be positive"), 2, "prog: error: --limit must be positive"),
        (argparse.ArgumentError(None, "unrecognized arguments: --x"), 2, "prog: error: unrecognized arguments: --x"),
        (FileNotFoundError("no data under /d"), 1, "prog: error: FileNotFoundError: no data under /d"),
        (SystemExit("prog: the split is empty"), 1, "prog: the split is empty"),
        (SystemExit(0), 0, None),
        (KeyboardInterrupt(), 130, "prog: interrupted"),
    ],
)
def test_exit_status_and_one_message(capsys, monkeypatch, err, status, line):
    monkeypatch.delenv("SBNN_DEBUG", raising=False)
    assert console_main("prog", _raise(err), [], usage_hint="see prog --help") == status
    captured = capsys.readouterr()
    assert captured.out == ""
    if line is not None:
        assert captured.err.splitlines()[0] == line
    assert "Traceback" not in captured.err and len(captured.err.splitlines()) <= 3


def test_success_is_status_0_and_debug_flag_is_not_passed_on(capsys, monkeypatch):
    monkeypatch.delenv("SBNN_DEBUG", raising=False)
    seen = []
    assert console_main("prog", seen.append, ["--debug", "a"]) == 0
    assert seen == [["a"]]


@pytest.mark.parametrize("argv, env, shown", [(["--debug"], None, True), ([], "1", True), ([], "0", False)])
def test_debug_shows_the_traceback(capsys, monkeypatch, argv, env, shown):
    monkeypatch.delenv("SBNN_DEBUG", raising=False)
    if env is not None:
        monkeypatch.setenv("SBNN_DEBUG", env)
    assert console_main("prog", _raise(RuntimeError("boom")), argv) == 1
    err = capsys.readouterr().err
    assert ("Traceback" in err) == shown and "prog: error: RuntimeError: boom" in err
