"""The installed console scripts (``sbnn``, ``sbnn-diagnose``, ``sbnn-run``) in a subprocess.

What a shell script or a cluster job sees: the exit status (0 success, 2 usage error, 1 runtime
failure), no object repr on success, and one readable message on an error (no usage dump, no
traceback unless ``--debug`` or ``SBNN_DEBUG=1``). The scripts are the ones installed next to the
running interpreter (``pip install -e .`` puts them there); only when they are not installed does
a test fall back to ``python -m <module>``, which runs the same ``main``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MODULES = {"sbnn": "sbnn.cli", "sbnn-diagnose": "sbnn.diagnostics.cli", "sbnn-run": "sbnn.run"}


def script(name: str) -> list[str]:
    """The command that runs console script ``name``: the installed one, else ``python -m``."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", MODULES[name]]


def run(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "SBNN_DEBUG"}
    return subprocess.run([*script(name), *args], cwd=cwd, env={**base, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=600)


def tiny_quickstart(tmp_path: Path) -> list[str]:
    return [
        "--config", str(RECIPES / "quickstart.yaml"),
        "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.n_train", "64",
        "--data.init_args.n_val", "32",
        "--data.init_args.n_test", "32",
        "--model.init_args.mc_samples", "2",
        "--model.init_args.mode_finetune_epochs", "0",
        "--threads", "1",
    ]


def assert_one_message(proc: subprocess.CompletedProcess, code: int, *needles: str, max_lines: int = 8) -> None:
    """Exit status ``code``; stderr names the problem in a few lines, without a usage dump or traceback."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text[-3000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in text and "usage:" not in text
    assert len(text.strip().splitlines()) <= max_lines, text


def test_sbnn_fit_validate_test_exit_zero(tmp_path):
    fit = run("sbnn", "fit", *tiny_quickstart(tmp_path), cwd=tmp_path)
    text = fit.stdout + fit.stderr
    assert fit.returncode == 0, text[-3000:]
    assert "sbnn: final test accuracy" in fit.stdout
    assert "SBNNCLI object" not in text and "<sbnn." not in text
    (ckpt,) = (tmp_path / "runs").rglob("last.ckpt")
    for subcommand in ("validate", "test"):
        proc = run("sbnn", subcommand, *tiny_quickstart(tmp_path), "--ckpt_path", str(ckpt), cwd=tmp_path)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        assert "SBNNCLI object" not in proc.stdout + proc.stderr
    assert "test_acc_mode" in proc.stdout


@pytest.mark.slow
def test_sbnn_fit_under_ddp_exits_zero_on_both_ranks(tmp_path):
    """Lightning re-runs the console script for rank 1; a rank that exits non-zero kills the job."""
    proc = run("sbnn", "fit", *tiny_quickstart(tmp_path), "--trainer.strategy", "ddp", "--trainer.devices", "2",
               "--trainer.accelerator", "cpu", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "MEMBER: 2/2" in text and "sbnn: final test accuracy" in text
    assert "SBNNCLI object" not in text and "terminated with code" not in text


def test_sbnn_version(tmp_path):
    proc = run("sbnn", "--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "sbnn 0.1.0", proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args, code, needles",
    [
        # usage errors: found before any work, status 2
        (["fit", "--config", str(RECIPES / "shd.yaml")], 2, ["data.root is required", "--data.root"]),
        (["fit", "--config", str(RECIPES / "quickstart.yaml"), "--model.init_args.network.init_args.neuron.estimator", "nope"],
         2, ["unknown estimator 'nope'", "iwst"]),
        (["fit", "--config", str(RECIPES / "quickstart.yaml"), "--data.init_args.batch_size", "0"], 2, ["batch_size"]),
        (["fit", "--config", str(RECIPES / "quickstart.yaml"), "--trainer.max_epoks", "1"],
         2, ["--trainer.max_epoks", "did you mean --trainer.max_epochs?"]),
        (["fit", "--config", str(RECIPES / "quickstart.yaml"), "--model.init_args.lrr", "0.1"],
         2, ["'lrr'", "did you mean 'lr'?"]),
    ],
    ids=["missing-root", "unknown-estimator", "batch-size-0", "trainer-typo", "model-typo"],
)
def test_sbnn_usage_errors_are_one_message(tmp_path, args, code, needles):
    proc = run("sbnn", *args, cwd=tmp_path)
    assert_one_message(proc, code, *needles)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_sbnn_missing_data_fails_with_status_1_and_leaves_no_folder(tmp_path):
    """CIFAR-10 without its files: a runtime failure (1), and no empty ``version_0/`` behind it."""
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    proc = run("sbnn", "fit", "--config", str(RECIPES / "cifar10.yaml"), "--data.root", "empty",
               "--trainer.logger.init_args.save_dir", str(out), "--trainer.default_root_dir", str(out), cwd=tmp_path)
    # Lightning's own start-up lines (seed, accelerators, a tip) come before the message
    assert_one_message(proc, 1, "FileNotFoundError", "CIFAR-10 batches not found", max_lines=10)
    assert not out.exists()


def test_a_failed_run_keeps_folders_that_existed(tmp_path):
    (tmp_path / "empty").mkdir()
    keep = tmp_path / "out" / "logs" / "version_0"
    keep.mkdir(parents=True)
    (keep / "notes.txt").write_text("mine")
    proc = run("sbnn", "fit", "--config", str(RECIPES / "cifar10.yaml"), "--data.root", "empty",
               "--trainer.logger.init_args.save_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 1
    assert (keep / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "out" / "logs").iterdir()) == ["version_0"]  # version_1 removed


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(tmp_path, how):
    args = ["fit", "--config", str(RECIPES / "quickstart.yaml"), "--data.init_args.batch_size", "0"]
    proc = run("sbnn", *args, *(["--debug"] if how == "flag" else []), cwd=tmp_path,
               env={"SBNN_DEBUG": "1"} if how == "env" else None)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert any(line.startswith("sbnn: error:") and "batch_size" in line for line in proc.stderr.splitlines())


DIAGNOSE = ["--hidden", "[2,2]", "--samples", "40", "--batch", "4", "--in_features", "4", "--estimators", "[st]", "--no_flow"]


def test_sbnn_diagnose_exit_zero_and_report_mode(tmp_path):
    proc = subprocess.run([*script("sbnn-diagnose"), *DIAGNOSE, "--out", "rep"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, umask=0o022)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "'rows'" not in proc.stdout + proc.stderr  # the result dict is not printed
    report = tmp_path / "rep" / "report.json"
    assert json.loads(report.read_text())["rows"]
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    assert [p.name for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--estimators", "[sst]"], ["unknown estimator 'sst'"]),
        (["--hiden", "[2]"], ["did you mean --hidden?"]),
        (["--samples", "0"], ["samples"]),
    ],
    ids=["unknown-estimator", "typo", "samples-0"],
)
def test_sbnn_diagnose_usage_errors(tmp_path, args, needles):
    proc = run("sbnn-diagnose", *args, "--out", "rep", cwd=tmp_path)
    assert_one_message(proc, 2, *needles)
    assert not (tmp_path / "rep").exists()


@pytest.fixture
def model_file(tmp_path) -> Path:
    from sbnn import export
    from sbnn.models import NeuronSettings, SpikingMLP

    net = SpikingMLP(30, (40,), 10, readout="spike_count", neuron=NeuronSettings(beta=0.5))
    with torch.no_grad():
        net.layers[0].log_scale.fill_(math.log(1.0))
        net.output.log_scale.fill_(math.log(0.5))
    return export.save(net, tmp_path / "m.sbnn")


RUN_DATA = ["--data-arg", "n_channels=30", "--data-arg", "n_steps=20", "--data-arg", "n_test=20", "--data-arg", "batch_size=10"]


def test_sbnn_run_exit_zero(tmp_path, model_file):
    proc = run("sbnn-run", str(model_file), "--data", "randman", *RUN_DATA, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "accuracy" in proc.stdout and "(" in proc.stdout and proc.stderr.strip() == ""


@pytest.mark.parametrize(
    "args, code, needles",
    [
        ([], 2, ["the following arguments are required: --data"]),
        (["--data", "shd"], 2, ["neither a known name"]),
        (["--data", "randman", "--limit", "0"], 2, ["--limit must be a positive integer"]),
        (["--data", "randman", "--limt", "3"], 2, ["did you mean --limit?"]),
    ],
    ids=["no-data", "unknown-data", "limit-0", "typo"],
)
def test_sbnn_run_usage_errors(tmp_path, model_file, args, code, needles):
    assert_one_message(run("sbnn-run", str(model_file), *args, cwd=tmp_path), code, *needles)


def test_sbnn_run_bad_model_file_is_a_runtime_failure(tmp_path):
    bad = tmp_path / "bad.sbnn"
    bad.write_bytes(b"nonsense")
    assert_one_message(run("sbnn-run", str(bad), "--data", "randman", cwd=tmp_path), 1, "bad magic")
