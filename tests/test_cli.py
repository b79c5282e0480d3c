"""The `sbnn` LightningCLI in-process: the quickstart recipe end to end (shortened), config errors,
the process settings a run must not leak. The installed console scripts: tests/test_console_scripts.py."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from sbnn.cli import _flush_denormal_enabled, main, run_cli

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _short(tmp_path: Path) -> list[str]:
    return [
        "--trainer.max_epochs", "2",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
        "--data.init_args.n_train", "96",
        "--data.init_args.n_val", "32",
        "--data.init_args.n_test", "32",
        "--model.init_args.mc_samples", "2",
        "--model.init_args.mode_finetune_epochs", "1",
    ]


def test_quickstart_runs_end_to_end(tmp_path, capsys):
    cli = run_cli(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path)])
    out = capsys.readouterr().out
    assert "sbnn: final test accuracy" in out and "mode" in out and "mc" in out
    metrics = cli.trainer.callback_metrics
    for name in ("mode", "mc", "lrt"):
        for metric in ("acc", "ece"):
            assert 0.0 <= float(metrics[f"test_{metric}_{name}"]) <= 1.0
        # entropy of a K-class prediction lies in [0, log K]
        assert 0.0 <= float(metrics[f"test_entropy_{name}"]) <= math.log(cli.datamodule.num_classes) + 1e-6
    # every epoch's checkpoint plus last.ckpt, as docs/recipes/README.md says of every recipe
    ckpts = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert ckpts == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "last.ckpt"]
    (log,) = tmp_path.rglob("metrics.csv")
    rows = list(csv.DictReader(log.open()))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any(r.get("val_acc_mode") for r in rows)
    assert bool(cli.model.calibrated)
    # a second run in the same folder must not trip over the saved config
    run_cli(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), "--trainer.max_epochs", "1"])


@pytest.mark.parametrize(
    "override, match",
    [
        (["--model.init_args.network.init_args.neuron.estimator", "nope"], "valid names"),
        (["--model.init_args.lam_lr", "-0.1"], "lam_lr"),
        (["--model.init_args.network.init_args.neuron.beta", "1.5"], "beta"),
        (["--model.init_args.mc_samples", "0"], "mc_samples"),
    ],
)
def test_bad_config_values_fail_with_a_clear_message(tmp_path, override, match, capsys):
    with pytest.raises((ValueError, SystemExit)) as info:
        run_cli(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), *override])
    text = str(info.value) + capsys.readouterr().err
    assert match in text
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("config.yaml"))  # nothing written


def test_negative_learning_rate_fails_at_parse_time(tmp_path, capsys):
    """jsonargparse rejects it while parsing: no model or data is built, nothing is written."""
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), "--model.init_args.lr", "-1"])
    err = capsys.readouterr().err
    assert "lr" in err and "PositiveFloat" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flag, calls", [("true", 1), ("false", 0), (None, 1)])
def test_keep_freed_memory_option(tmp_path, capsys, monkeypatch, flag, calls):
    import sbnn.cli

    seen = []
    monkeypatch.setattr(sbnn.cli, "keep_freed_memory", lambda: seen.append(True) or True)
    option = [] if flag is None else ["--keep_freed_memory", flag]  # on by default in the CLI
    run_cli(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), *option,
          "--trainer.max_epochs", "1"])
    assert len(seen) == calls  # the flag reaches the allocator setting, and only when asked
    assert "sbnn: final test accuracy" in capsys.readouterr().out


def test_main_returns_the_exit_status_and_restores_process_settings(tmp_path, capsys, monkeypatch):
    """``main`` returns 0 (not the CLI object); flush-to-zero and the thread count are the caller's again."""
    assert not _flush_denormal_enabled()  # the test process starts with denormals kept
    before = torch.get_num_threads()
    calls = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n) or real_set(n))
    status = main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), "--trainer.max_epochs", "1",
                   "--model.init_args.mode_finetune_epochs", "0", "--threads", "1"])
    assert status == 0
    assert "sbnn: final test accuracy" in capsys.readouterr().out
    assert not _flush_denormal_enabled()
    assert calls == [1, before] and torch.get_num_threads() == before  # --threads applied, then restored


def test_flush_denormal_probe():
    """The probe that the restore relies on reads the setting back."""
    try:
        assert torch.set_flush_denormal(True)  # x86 with SSE3: supported
        assert _flush_denormal_enabled()
    finally:
        torch.set_flush_denormal(False)
    assert not _flush_denormal_enabled()


def test_main_returns_2_for_a_usage_error_and_writes_nothing(tmp_path, capsys):
    status = main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), "--trainer.max_epoks", "1"])
    err = capsys.readouterr().err
    assert status == 2 and "did you mean --trainer.max_epochs?" in err and "usage:" not in err
    assert not any(tmp_path.iterdir())
    assert not _flush_denormal_enabled()


def test_runtime_module_is_reachable_from_import_sbnn():
    """In a fresh interpreter: here another test module may already have imported sbnn.runtime."""
    import subprocess
    import sys

    code = "import sbnn; print(callable(sbnn.runtime.keep_freed_memory))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]


@pytest.mark.slow
def test_compiled_fit_through_the_cli(tmp_path, capsys):
    """``--model.init_args.compile true``: the quickstart trains under torch.compile (Inductor) and tests."""
    cli = run_cli(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), "--model.init_args.compile", "true"])
    assert "sbnn: final test accuracy" in capsys.readouterr().out
    assert cli.model._compiled_terms is not None
    (log,) = tmp_path.rglob("metrics.csv")
    losses = [float(r["train_loss"]) for r in csv.DictReader(log.open()) if r.get("train_loss")]
    assert losses and all(math.isfinite(v) for v in losses)


def test_a_monitored_checkpoint_is_the_one_tested(tmp_path, capsys):
    """With ``ModelCheckpoint(monitor=...)`` the fit tests the best checkpoint on validation, and says so."""
    import yaml

    config = yaml.safe_load((RECIPES / "quickstart.yaml").read_text())
    (checkpoint,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    checkpoint["init_args"] = {"monitor": "val_acc_mode", "mode": "max", "save_last": True}
    path = tmp_path / "monitored.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = run_cli(["fit", "--config", str(path), *_short(tmp_path), "--trainer.max_epochs", "3"])
    out = capsys.readouterr().out
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and Path(best).name != "last.ckpt"
    assert "sbnn: testing the checkpoint of the best val_acc_mode" in out and best in out
    assert cli.trainer.ckpt_path == best  # what trainer.test loaded
    assert "sbnn: final test accuracy" in out
