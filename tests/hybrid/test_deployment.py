"""FedHyBNN on Flower's deployment engine: real SuperLink and SuperNode processes on localhost."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from sbnn.hybrid.federated import FedConfig, write_federation_data

pytestmark = pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="needs the federated extra")


def _group_members(pgids: set[int]) -> list[int]:
    """Live processes whose process group is one of ``pgids`` (read from /proc)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        state, pgrp = fields[0], int(fields[2])
        if pgrp in pgids and state != "Z":
            alive.append(int(entry.name))
    return alive


def test_deployment_run_finishes_and_leaves_no_process(tmp_path, gen):
    from sbnn.hybrid.deployment import run_deployment

    z = torch.randint(0, 2, (24, 8), generator=gen).float()
    y = z[:, 0].long()
    data = write_federation_data(tmp_path / "codes.npz", z, y, z[:8], y[:8])
    # the bound is generous: five Python processes start on a shared 2-core machine
    out = run_deployment(data, FedConfig(n_clients=2, rounds=1, hidden=4), tmp_path / "work", timeout=540)
    assert len(out["accuracy"]) == 2  # the initial head and round 1, evaluated by the ServerApp
    assert out["uplink_bytes"][0] > 0 and out["downlink_bytes"][0] > 0
    assert len(out["pids"]) == 3  # SuperLink + 2 SuperNodes
    assert _group_members(set(out["pids"])) == []
    assert os.path.exists(tmp_path / "work" / "superlink.log")


def test_deployment_rejects_bad_input_before_starting(tmp_path, gen):
    from sbnn.hybrid.deployment import run_deployment

    z = torch.randint(0, 2, (3, 8), generator=gen).float()
    data = write_federation_data(tmp_path / "codes.npz", z, torch.zeros(3, dtype=torch.long), z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot give 5 clients data"):
        run_deployment(data, FedConfig(n_clients=5, rounds=1), tmp_path / "work")
    assert not (tmp_path / "work").exists()
