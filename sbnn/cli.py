"""The ``sbnn`` command: a LightningCLI over sbnn's tasks and data modules.

``sbnn fit --config recipes/quickstart.yaml`` trains, writes checkpoints and logs, and then tests
the final model, printing ``mode``, MC and LRT-averaged accuracy. YAML names classes by import
path (``class_path: sbnn.tasks.SpikingClassificationTask``).

Exit status (see :mod:`sbnn._console`): 0 on success; 2 for a usage error (an unknown or misspelt
option, a missing required option such as ``--data.root``, a value a configured class refuses),
reported in one message before anything is written; 1 when the run fails (missing data, an error
while training). ``--debug`` anywhere on the command line, or ``SBNN_DEBUG=1``, adds the traceback.

:func:`main` is the console script; :func:`run_cli` runs the same command in-process and returns
the :class:`SBNNCLI` (for tests and notebooks), raising instead of returning a status.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning as L
import torch
from jsonargparse import Namespace
from jsonargparse.typing import PositiveInt
from lightning.pytorch.cli import ArgsType, LightningCLI

import sbnn

# so short class paths resolve in configs (sbnn.models.*, sbnn.callbacks.EpochSeed, sbnn.tasks.*, sbnn.training.*)
from . import callbacks, data, models, tasks, training  # noqa: F401
from ._console import UsageError, console_main, help_options, readable_error
from .runtime import keep_freed_memory

__all__ = ["SBNNCLI", "main", "run_cli", "with_tensorboard"]

PROG = "sbnn"


class SBNNCLI(LightningCLI):
    """LightningCLI that also tests the trained model at the end of ``fit``.

    Adds two options to every subcommand:

    - ``--keep_freed_memory`` (default ``true``): keep freed memory in glibc's heap, which removes
      per-step page faults (see :func:`sbnn.runtime.keep_freed_memory`). On by default here: a
      CLI run owns its process from start to end, and a training step reaches the same heap peak
      every step, so keeping freed memory costs no memory the run does not already use at its peak
      (blocks over 1 GiB still go back to the OS). ``false`` keeps glibc's defaults;
    - ``--threads N`` (default: PyTorch's choice, one per core): ``torch.set_num_threads(N)`` for
      the run. On a 2-core machine shared with other work, 1 is the faster choice (README).

    A value that a configured class refuses while it is built (``ValueError``/``TypeError`` from
    its constructor) is raised as a :class:`~sbnn._console.UsageError`. A run that fails before it
    has logged anything or written a checkpoint removes the log folder it created.
    """

    def __init__(self, *args, **kwargs) -> None:
        self._new_log_folders: list[Path] = []
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self._remove_unused_log_folders()
            raise

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--keep_freed_memory", type=bool, default=True,
                            help="keep freed memory in the heap (glibc mallopt); false: glibc's defaults")
        parser.add_argument("--threads", type=Optional[PositiveInt], default=None,
                            help="torch.set_num_threads for the run (default: one per core; 1 is faster on a busy machine)")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.get("threads"):
            torch.set_num_threads(int(config["threads"]))
        if config.get("keep_freed_memory") and not keep_freed_memory():
            print("sbnn: --keep_freed_memory has no effect here (no glibc mallopt)")

    def parse_arguments(self, parser, args: ArgsType) -> None:
        """Parse ``args`` into ``self.config``; an error comes back shortened, with "did you mean"."""
        try:
            self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)
        except argparse.ArgumentError as err:
            raise argparse.ArgumentError(None, readable_error(str(err), self._known_options(args))) from err

    def _known_options(self, args: ArgsType) -> list[str]:
        """The long options of the subcommand named in ``args`` (of the root parser without one)."""
        argv = [] if isinstance(args, (dict, Namespace)) else list(sys.argv[1:] if args is None else args)
        subcommand = next((a for a in argv if a in self.subcommands()), None)
        return help_options(self._parser(subcommand).format_help())  # the root parser without a subcommand

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            raise UsageError(readable_error(str(err))) from err

    def before_fit(self) -> None:
        self.trainer.loggers = with_tensorboard(self.trainer.loggers, _tensorboard_available())
        self._note_new_log_folders()

    def before_validate(self) -> None:
        self._note_new_log_folders()

    def before_test(self) -> None:
        self._note_new_log_folders()

    def before_predict(self) -> None:
        self._note_new_log_folders()

    def after_fit(self) -> None:
        if self.trainer.interrupted or self.trainer.state.status.value != "finished":
            return
        best = _monitored_best_checkpoint(self.trainer)
        if best is not None and self.trainer.is_global_zero:
            callback = self.trainer.checkpoint_callback
            print(f"sbnn: testing the checkpoint of the best {callback.monitor} ({float(callback.best_model_score):.4f}): {best}")
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)
        if results and self.trainer.is_global_zero:
            r = results[0]
            parts = [f"{k.removeprefix('test_acc_')} {100 * v:.1f} %" for k, v in r.items() if k.startswith("test_acc_")]
            print("sbnn: final test accuracy — " + ", ".join(parts))

    def _note_new_log_folders(self) -> None:
        """Remember the topmost folder of each logger's ``log_dir`` that does not exist yet."""
        for logger in self.trainer.loggers:
            log_dir = getattr(logger, "log_dir", None)  # computing it creates nothing
            if log_dir is None:
                continue
            top = _first_missing_ancestor(Path(log_dir))
            if top is not None and top not in self._new_log_folders:
                self._new_log_folders.append(top)

    def _remove_unused_log_folders(self) -> None:
        """After a failure: remove the folders this run created if it wrote no checkpoint and no metrics."""
        for folder in self._new_log_folders:
            if folder.is_dir() and not _holds_results(folder):
                shutil.rmtree(folder, ignore_errors=True)


def _first_missing_ancestor(path: Path) -> Path | None:
    """The topmost of ``path`` and its parents that does not exist (``None`` if ``path`` exists)."""
    path = path.absolute()
    if path.exists():
        return None
    top = path
    while not top.parent.exists():
        top = top.parent
    return top


def _holds_results(folder: Path) -> bool:
    """Whether a run wrote anything worth keeping under ``folder``: a checkpoint or logged metrics."""
    return any(p.suffix == ".ckpt" or p.name == "metrics.csv" for p in folder.rglob("*"))


def _tensorboard_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def with_tensorboard(loggers: list, available: bool) -> list:
    """CSV logs by default, TensorBoard too when it is installed.

    When ``available`` and the run logs to a :class:`~lightning.pytorch.loggers.CSVLogger` but to
    no TensorBoard logger, returns the loggers plus a ``TensorBoardLogger`` writing next to the
    CSV logs (same ``save_dir``, ``name`` and ``version``); otherwise returns ``loggers`` unchanged.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if not available or any(isinstance(lg, TensorBoardLogger) for lg in loggers):
        return loggers
    csv = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
    if csv is None:
        return loggers
    return [*loggers, TensorBoardLogger(save_dir=csv.save_dir, name=csv.name, version=csv.version)]


def _flush_denormal_enabled() -> bool:
    """Whether this thread flushes denormal floats to zero (PyTorch has a setter but no getter)."""
    tiny = torch.full((1,), 2.0**-140, dtype=torch.float32)  # a float32 denormal
    return bool((tiny * 1.0)[0] == 0)


@contextmanager
def _cpu_settings() -> Iterator[None]:
    """Flush-to-zero and the thread count for one CLI run, restored afterwards.

    Long runs slow down ~1.75x from denormal floats in decaying membranes (docs/design.md §7),
    so the run flushes them to zero; the caller's process gets its previous setting back.
    """
    flush, threads = _flush_denormal_enabled(), torch.get_num_threads()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(flush)
        torch.set_num_threads(threads)


def run_cli(args: ArgsType = None, *, exit_on_error: bool = True) -> SBNNCLI:
    """Run the ``sbnn`` command in-process and return the :class:`SBNNCLI` (trainer, model, data).

    Args:
        args: the command line without the program name (default ``sys.argv[1:]``), e.g.
            ``["fit", "--config", "recipes/quickstart.yaml"]``.
        exit_on_error: as jsonargparse's: ``True`` prints the usage and the message of a parse
            error and raises ``SystemExit(2)``; ``False`` (what :func:`main` uses) raises
            ``argparse.ArgumentError`` with a shortened message and a "did you mean".

    Returns:
        The CLI object after its subcommand ran.

    Raises:
        UsageError: a configured class refused a value (a ``ValueError``).
        argparse.ArgumentError: with ``exit_on_error=False``, the command line or a config file
            does not parse.
        SystemExit: ``--help`` and ``--version`` (status 0); a parse error with ``exit_on_error``.
    """
    with _cpu_settings():
        return SBNNCLI(
            # any LightningModule: SpikingClassificationTask, or sbnn.tasks.MethodTask
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": PROG, "version": sbnn.__version__, "exit_on_error": exit_on_error},
            args=args,
        )


def _monitored_best_checkpoint(trainer: Any) -> str | None:
    """The best checkpoint's path when the run's ``ModelCheckpoint`` monitors a metric, else ``None``.

    ``fit`` then tests that checkpoint (Lightning's ``ckpt_path="best"``), chosen on the
    validation split; without a monitored metric it tests the network as training left it.
    """
    callback = trainer.checkpoint_callback
    if callback is None or not getattr(callback, "monitor", None) or not getattr(callback, "best_model_path", ""):
        return None
    return callback.best_model_path


def main(args: ArgsType = None) -> int:
    """Entry point of the ``sbnn`` console script; returns the exit status (0, 1 or 2).

    Args:
        args: the command line without the program name (default ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if args is None else args)
    subcommand = next((a for a in argv if a in SBNNCLI.subcommands()), "<subcommand>")
    # exit_on_error=False: a parse error is raised and printed in one message, not after a usage dump
    return console_main(PROG, partial(run_cli, exit_on_error=False), argv, usage_hint=f"{PROG}: for the options run: {PROG} {subcommand} --help")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
