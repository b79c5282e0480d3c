"""recipes/dvs_gesture_frames*.yaml run end to end on a generated SpikingJelly frame folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sbnn.cli import run_cli as main
from sbnn.data._fixtures import write_dvs_frames

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("recipe", ["dvs_gesture_frames", "dvs_gesture_frames_gpu"])
def test_frames_recipe_end_to_end_on_fixtures(tmp_path, capsys, recipe):
    root = write_dvs_frames(tmp_path / "DVSGC_frames_number_49_split_by_number", (1, 1, 1), classes=(0, 4, 7))
    out = tmp_path / "runs"
    cli = main([
        "fit", "--config", str(RECIPES / f"{recipe}.yaml"), "--data.root", str(root),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
        "--trainer.accelerator", "cpu", "--data.init_args.num_workers", "0",
        "--model.init_args.mc_samples", "2", "--model.init_args.network.init_args.channels", "[4, 4]",
        "--model.init_args.network.init_args.fc", "[8]", "--data.init_args.batch_size", "2",
        "--data.init_args.n_time_bins", "4", "--trainer.max_epochs", "2", "--model.init_args.mode_finetune_epochs", "1",
    ])
    assert "sbnn: final test accuracy" in capsys.readouterr().out
    metrics = cli.trainer.callback_metrics
    for name in ("mode", "mc", "lrt"):
        assert 0.0 <= float(metrics[f"test_acc_{name}"]) <= 1.0
    (log,) = (out / "logs" / "version_0").glob("metrics.csv")
    rows = list(csv.DictReader(log.open()))
    assert sum(1 for r in rows if r.get("val_acc_mode")) == 2  # the folder's validation split, every epoch
    assert cli.datamodule.n_train == 3 and len(cli.datamodule.val_set) == 3
    assert any((tmp_path / "sbnn_cache" / "dvs_frames").glob("train-*.npz"))


@pytest.mark.parametrize("method", [None, "sbnn.training.FullPrecisionMethod"])
def test_methods_recipe_trains_the_same_network_by_another_method(tmp_path, capsys, method):
    root = write_dvs_frames(tmp_path / "DVSGC_frames_number_49_split_by_number", (1, 1, 1), classes=(0, 4, 7))
    out = tmp_path / "runs"
    args = [
        "fit", "--config", str(RECIPES / "dvs_gesture_frames_methods.yaml"), "--data.root", str(root),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
        "--model.init_args.mc_samples", "2", "--model.init_args.network.init_args.channels", "[4, 4]",
        "--model.init_args.network.init_args.fc", "[8]", "--data.init_args.batch_size", "2",
        "--data.init_args.n_time_bins", "4", "--trainer.max_epochs", "1",
    ]
    if method:
        args += ["--model.init_args.method", method]
    cli = main(args)
    assert "sbnn: final test accuracy" in capsys.readouterr().out
    expected = "FullPrecisionMethod" if method else "STEMethod"
    assert type(cli.model.method).__name__ == expected
    # the same network as the SBNN recipe (only the training method differs)
    assert type(cli.model.network).__name__ == "SpikingConvNet" and cli.model.network.num_classes == 11
    assert 0.0 <= float(cli.trainer.callback_metrics["test_acc_mode"]) <= 1.0
