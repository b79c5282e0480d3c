"""The ``sbnn`` command: a LightningCLI over sbnn's tasks and data modules.

``sbnn fit --config recipes/quickstart.yaml`` trains, writes checkpoints and logs, and then tests
the final model, printing ``mode``, MC and LRT-averaged accuracy. YAML names classes by import
path (``class_path: sbnn.tasks.SpikingClassificationTask``).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.cli import ArgsType, LightningCLI

import sbnn

# so short class paths resolve in configs (sbnn.models.*, sbnn.callbacks.EpochSeed, sbnn.tasks.*, sbnn.training.*)
from . import callbacks, data, models, tasks, training  # noqa: F401
from .runtime import keep_freed_memory

__all__ = ["SBNNCLI", "main", "with_tensorboard"]


class SBNNCLI(LightningCLI):
    """LightningCLI that also tests the trained model at the end of ``fit``.

    Adds ``--keep_freed_memory`` (default ``false``): keep freed memory in glibc's heap, which
    removes per-step page faults (see :func:`sbnn.runtime.keep_freed_memory`).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--keep_freed_memory", type=bool, default=False, help="keep freed memory in the heap (glibc mallopt)")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.get("keep_freed_memory") and not keep_freed_memory():
            print("sbnn: --keep_freed_memory has no effect here (no glibc mallopt)")

    def before_fit(self) -> None:
        self.trainer.loggers = with_tensorboard(self.trainer.loggers, _tensorboard_available())

    def after_fit(self) -> None:
        if self.trainer.interrupted or self.trainer.state.status.value != "finished":
            return
        results = self.trainer.test(self.model, datamodule=self.datamodule)
        if results and self.trainer.is_global_zero:
            r = results[0]
            parts = [f"{k.removeprefix('test_acc_')} {100 * v:.1f} %" for k, v in r.items() if k.startswith("test_acc_")]
            print("sbnn: final test accuracy — " + ", ".join(parts))


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


def main(args: ArgsType = None) -> SBNNCLI:
    """Entry point of the ``sbnn`` console script (``args`` for tests, as torchgeo does)."""
    # long runs slow down ~1.75x from denormal floats in decaying membranes (docs/design.md §7)
    torch.set_flush_denormal(True)
    return SBNNCLI(
        # any LightningModule: SpikingClassificationTask, or sbnn.tasks.MethodTask
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"version": f"sbnn {sbnn.__version__}"},
        args=args,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
