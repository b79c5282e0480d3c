"""The `sbnn` LightningCLI: the quickstart recipe end to end (shortened), and config errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from sbnn.cli import main

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
    cli = main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path)])
    out = capsys.readouterr().out
    assert "sbnn: final test accuracy" in out and "mode" in out and "mc" in out
    metrics = cli.trainer.callback_metrics
    for name in ("mode", "mc", "lrt"):
        for metric in ("acc", "ece"):
            assert 0.0 <= float(metrics[f"test_{metric}_{name}"]) <= 1.0
        # entropy of a K-class prediction lies in [0, log K]
        assert 0.0 <= float(metrics[f"test_entropy_{name}"]) <= math.log(cli.datamodule.num_classes) + 1e-6
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in ckpts)
    (log,) = tmp_path.rglob("metrics.csv")
    rows = list(csv.DictReader(log.open()))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any(r.get("val_acc_mode") for r in rows)
    assert bool(cli.model.calibrated)
    # a second run in the same folder must not trip over the saved config
    main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), "--trainer.max_epochs", "1"])


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
        main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), *override])
    text = str(info.value) + capsys.readouterr().err
    assert match in text
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("config.yaml"))  # nothing written


def test_negative_learning_rate_fails_at_parse_time(tmp_path, capsys):
    """jsonargparse rejects it while parsing: no model or data is built, nothing is written."""
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), "--model.init_args.lr", "-1"])
    err = capsys.readouterr().err
    assert "lr" in err and "PositiveFloat" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flag, calls", [("true", 1), ("false", 0)])
def test_keep_freed_memory_option(tmp_path, capsys, monkeypatch, flag, calls):
    import sbnn.cli

    seen = []
    monkeypatch.setattr(sbnn.cli, "keep_freed_memory", lambda: seen.append(True) or True)
    main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), "--keep_freed_memory", flag,
          "--trainer.max_epochs", "1"])
    assert len(seen) == calls  # the flag reaches the allocator setting, and only when asked
    assert "sbnn: final test accuracy" in capsys.readouterr().out
