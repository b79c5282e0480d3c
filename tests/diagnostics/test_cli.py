"""``sbnn-diagnose``: table, JSON and PNG; bad input; no matplotlib."""

from __future__ import annotations

import builtins
import importlib.util
import json

import pytest

from sbnn.diagnostics.cli import main, run

FAST = ["--hidden", "[2,2]", "--samples", "40", "--batch", "4", "--in_features", "4"]


def test_report_writes_table_json_and_plot(tmp_path, capsys):
    result = run([*FAST, "--estimators", "[st,iwst:p=0.5,agr:tau=0.5,reinforce]", "--noise", "[gaussian,logistic]", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "iwst:p=0.5" in out and "reinforce" in out and "vanishing" in out
    data = json.loads((tmp_path / "report.json").read_text())
    assert data == json.loads(json.dumps(result))
    layers = {r["layer"] for r in data["rows"]}
    assert layers == {"layers.0", "layers.1", "output", "all"}
    assert {r["reference"] for r in data["rows"]} == {"exact"}
    assert all(r["variance"] >= 0 and -1 <= r["cosine"] <= 1 for r in data["rows"])
    if importlib.util.find_spec("matplotlib") is None:  # the plot is an optional extra (sbnn[plot])
        assert "pip install 'sbnn[plot]'" in out and not (tmp_path / "report.png").exists()
    else:
        assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_config_file_and_sampled_reference_when_too_large(tmp_path, capsys):
    cfg = tmp_path / "diag.yaml"
    cfg.write_text("hidden: [12, 12]\nsamples: 20\nreference_samples: 60\nbatch: 3\nestimators: [st]\nin_features: 4\n")
    result = run(["--config", str(cfg), "--out", str(tmp_path / "o"), "--no_flow"])
    assert {r["reference"] for r in result["rows"]} == {"reinforce(60)"}
    assert result["flow"] == []


def test_unknown_estimator_lists_the_valid_names(tmp_path, capsys):
    assert main([*FAST, "--estimators", "[sst]", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown estimator 'sst'" in err and "reinforce" in err and "gumbel_rao" in err
    assert not (tmp_path / "report.json").exists()


def test_without_matplotlib_the_table_is_still_printed(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main([*FAST, "--estimators", "[st]", "--out", str(tmp_path), "--no_flow"]) == 0
    out = capsys.readouterr().out
    assert "pip install 'sbnn[plot]'" in out and "st" in out
    assert (tmp_path / "report.json").exists() and not (tmp_path / "report.png").exists()


def test_shipped_config_parses_and_validates():
    from dataclasses import fields
    from pathlib import Path

    from sbnn.diagnostics.cli import build_parser
    from sbnn.diagnostics.report import DiagnoseConfig

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "configs" / "diagnose_spiking.yaml"
    ns = build_parser().parse_args(["--config", str(path)])
    cfg = DiagnoseConfig(**{f.name: ns[f.name] for f in fields(DiagnoseConfig)})
    cfg.validate()
    assert cfg.membrane_noise == "marginal" and cfg.steps == 3


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_report_files_follow_the_umask(tmp_path, umask, mode):
    """report.json and report.png are created as open() creates files (0666 less the umask), atomically."""
    import os
    import stat

    from sbnn.diagnostics.report import plot_report, write_json

    result = run([*FAST, "--estimators", "[st]", "--out", str(tmp_path / "first"), "--no_flow"])
    old = os.umask(umask)
    try:
        written = [write_json(result, tmp_path / "o" / "report.json")]
        if importlib.util.find_spec("matplotlib") is not None:
            written.append(plot_report(result, tmp_path / "o" / "report.png"))
    finally:
        os.umask(old)
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [mode] * len(written)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(p.name for p in written)  # no temp files
