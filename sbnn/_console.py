"""Exit status and error reporting shared by sbnn's console scripts (``sbnn``, ``sbnn-diagnose``, ``sbnn-run``).

A console script's ``main`` returns an exit status that a shell script or a cluster job can trust:

- ``0``: the command did what it was asked;
- ``2``: a usage error, found before any work: an unknown or misspelt option, a missing required
  option, a value the command (or a class it builds from the configuration) refuses;
- ``1``: the run itself failed (missing or corrupt data, an error while training or evaluating).

An error prints one message naming the problem on stderr (``prog: error: ...``) and a hint, not a
usage dump or a traceback. ``--debug`` anywhere on the command line, or the environment variable
``SBNN_DEBUG=1``, prints the traceback as well.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import re
import sys
import traceback
from typing import Callable, Sequence

__all__ = [
    "DEBUG_ENV", "DEBUG_FLAG", "UsageError", "console_main", "debug_requested", "help_options", "readable_error",
    "strip_debug_flag",
]

DEBUG_FLAG = "--debug"
DEBUG_ENV = "SBNN_DEBUG"

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """A command line or configuration that a console script refuses before any work (exit status 2).

    A ``ValueError``: in-process callers that catch a refused configuration value keep working.
    """


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether ``argv`` holds ``--debug`` or the environment sets ``SBNN_DEBUG`` to a true value."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return DEBUG_FLAG in argv or env not in ("", "0", "false", "no", "off")


def strip_debug_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--debug`` (the flag belongs to the wrapper, not to the command's parser)."""
    return [a for a in argv if a != DEBUG_FLAG]


_UNION = "Does not validate against any of the Union subtypes"


def readable_error(message: str, options: Sequence[str] = ()) -> str:
    """jsonargparse's error message, shortened to what the user must change, plus "did you mean".

    jsonargparse reports a refused value of a ``class_path``/``init_args`` group as a union of
    alternatives ("Does not validate against any of the Union subtypes ... Given value: ..."); only
    the alternative that names the problem is kept (not the ``NoneType`` one, not the dump of the
    given value). An unknown option gets the closest of ``options``, or of the configured class's
    parameters, as a suggestion.

    Args:
        message: the error message.
        options: the long options the command accepts (``--trainer.max_epochs``, ...).

    Returns:
        The message, usually one line.
    """
    text = message
    if _UNION in message:
        key = re.match(r'\s*Parser key "([^"]+)":', message)
        problems = [p for p in _union_errors(message) if not p.startswith("Expected a <class 'NoneType'>")]
        text = ("--" + key.group(1) + ": " if key else "") + "; ".join(problems or [message.strip()])
    hint = _suggestion(text, options)
    return f"{text} (did you mean {hint}?)" if hint else text


def _union_errors(message: str) -> list[str]:
    """The bullets under the first ``Errors:`` of a union message, each joined into one line."""
    lines = message.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Errors:"), None)
    if start is None:
        return []
    bullets: list[list[str]] = []
    indent = None
    for line in lines[start + 1:]:
        stripped = line.lstrip()
        depth = len(line) - len(stripped)
        if stripped.startswith("- ") and (indent is None or depth == indent):
            indent = depth
            bullets.append([stripped[2:]])
        elif bullets and depth > indent:
            bullets[-1].append(stripped)
        else:
            break
    return [" ".join(b) for b in bullets]


def _suggestion(text: str, options: Sequence[str]) -> str | None:
    """The closest known name to an unknown option named in ``text``, or ``None``."""
    unknown = re.search(r"unrecognized arguments: (--[\w.\-]+)", text)
    if unknown:
        name = unknown.group(1).split("=")[0]
        close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.75)
        return close[0] if close else None
    option = re.search(r"class_path '([\w.]+)': Option '(\w+)' is not accepted", text)
    if option:
        try:
            module, _, name = option.group(1).rpartition(".")
            params = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
        except (ImportError, AttributeError, TypeError, ValueError):
            return None
        close = difflib.get_close_matches(option.group(2), params, n=1, cutoff=0.6)
        return f"'{close[0]}'" if close else None
    return None


def help_options(help_text: str) -> list[str]:
    """The long options (``--name.sub``) that a parser's ``format_help()`` text lists."""
    return sorted(set(re.findall(r"(--[A-Za-z0-9_.]+)", help_text)))


def _message(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, (UsageError, argparse.ArgumentError)):
        return text
    # a runtime failure: the exception type is part of the message (FileNotFoundError says more than the path)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _report(prog: str, err: BaseException, debug: bool, hint: str) -> None:
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    print(f"{prog}: error: {_message(err)}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    if not debug:
        print(f"{prog}: run again with {DEBUG_FLAG} (or {DEBUG_ENV}=1) to see the traceback", file=sys.stderr)


def console_main(prog: str, body: Callable[[list[str]], object], argv: Sequence[str] | None = None,
                 usage_hint: str = "") -> int:
    """Run ``body(argv)`` as a console command and return its exit status (0, 1, 2 or 130).

    Args:
        prog: the command's name, the prefix of every error message.
        body: the command; it parses ``argv`` itself and raises on failure. A
            :class:`UsageError` or :class:`argparse.ArgumentError` is a usage error (status 2),
            any other exception a runtime failure (status 1); ``SystemExit`` (``--help``,
            ``--version``) passes its status through, and a string status is printed as the
            message of a runtime failure.
        argv: the arguments (default ``sys.argv[1:]``); ``--debug`` is removed before ``body``
            sees them.
        usage_hint: a line printed after a usage error's message (e.g. where ``--help`` is).

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        body(strip_debug_flag(argv))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        print(str(exc.code), file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, argparse.ArgumentError) as err:
        _report(prog, err, debug, usage_hint)
        return EXIT_USAGE
    except Exception as err:  # the console boundary: every failure becomes one message and status 1
        _report(prog, err, debug, "")
        return EXIT_FAILURE
    return EXIT_OK
