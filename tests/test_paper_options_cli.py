"""The SNR loss, the per-time-step gain and the one-sample evaluation from a YAML recipe (the `sbnn` CLI in-process)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sbnn.cli import run_cli
from sbnn.models.time_affine import TimeAffine
from sbnn.training import SNRLoss

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _short(tmp_path: Path) -> list[str]:
    return [
        "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
        "--data.init_args.n_train", "64",
        "--data.init_args.n_val", "32",
        "--data.init_args.n_test", "32",
        "--model.init_args.mc_samples", "2",
        "--model.init_args.mode_finetune_epochs", "0",
    ]


def test_snr_loss_and_time_affine_from_yaml(tmp_path):
    cli = run_cli([
        "fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path),
        "--model.init_args.aux_loss", "snr", "--model.init_args.aux_weight", "0.1",
        "--model.init_args.network.init_args.layer.time_affine_steps", "50",
    ])
    assert isinstance(cli.model.aux_fn, SNRLoss)
    affines = [m for m in cli.model.network.modules() if isinstance(m, TimeAffine)]
    assert len(affines) == 1 and affines[0].steps == 50
    metrics = cli.trainer.callback_metrics
    for kind in ("mode", "mc", "lrt", "sample"):
        assert 0.0 <= float(metrics[f"test_acc_{kind}"]) <= 1.0
    (log,) = tmp_path.rglob("metrics.csv")
    aux = [float(r["train_aux"]) for r in csv.DictReader(log.open()) if r.get("train_aux")]
    assert aux and all(a > 0 for a in aux)
    # the gain and bias were trained (Randman has 50 steps: every one is used)
    assert float((affines[0].gain - 1).abs().sum()) > 0 and float(affines[0].bias.abs().sum()) > 0


def test_sequence_longer_than_the_gain_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"50 time steps.*layer.time_affine_steps = 20.*at least 50"):
        run_cli(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path),
                 "--model.init_args.network.init_args.layer.time_affine_steps", "20"])
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


@pytest.mark.parametrize("override, match", [
    (["--model.init_args.aux_weight", "-0.001", "--model.init_args.aux_loss", "snr"], "aux_weight"),
    (["--model.init_args.aux_loss", "snr2"], "aux_loss"),
    (["--model.init_args.network.init_args.layer.time_affine_steps", "0"], "time_affine_steps"),
])
def test_bad_values_fail_at_parse_or_build_time(tmp_path, capsys, override, match):
    with pytest.raises((ValueError, SystemExit)) as info:
        run_cli(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), *override])
    assert match in str(info.value) + capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("config.yaml"))
