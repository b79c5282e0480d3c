"""FedHyBNN: aggregation rules by hand, shards, bad input, and one Flower simulation round."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sbnn.hybrid import federated as fed
from sbnn.hybrid.federated import FedConfig, aggregate, encode_upload, split_shards

BROADCAST = {"fc1.lam": np.array([[0.5, -1.0, 0.0]], dtype=np.float32), "fc1.bias": np.array([1.0], dtype=np.float32)}
UPLOADS = [
    {"fc1.lam": np.array([[1.0, -2.0, 0.5]], dtype=np.float32), "fc1.bias": np.array([2.0], dtype=np.float32)},
    {"fc1.lam": np.array([[-1.0, 1.0, 0.5]], dtype=np.float32), "fc1.bias": np.array([5.0], dtype=np.float32)},
]
WEIGHTS = [1.0, 3.0]


def test_mean_is_the_example_weighted_average():
    out = aggregate(UPLOADS, WEIGHTS, BROADCAST, "mean")
    # (1·1 + 3·(−1))/4 = −0.5; (1·(−2) + 3·1)/4 = 0.25; 0.5; bias (2 + 15)/4 = 4.25
    np.testing.assert_allclose(out["fc1.lam"], [[-0.5, 0.25, 0.5]])
    np.testing.assert_allclose(out["fc1.bias"], [4.25])


def test_product_sums_lambdas_minus_the_extra_priors():
    out = aggregate(UPLOADS, WEIGHTS, BROADCAST, "product")
    # λ1 + λ2 − (2 − 1)·λ_prior
    np.testing.assert_allclose(out["fc1.lam"], [[1 - 1 - 0.5, -2 + 1 + 1.0, 0.5 + 0.5 - 0.0]])
    np.testing.assert_allclose(out["fc1.bias"], [4.25])


def test_mode_sends_one_bit_per_weight_and_votes():
    sent = [encode_upload(u, "mode") for u in UPLOADS]
    assert sent[0]["fc1.lam:bits"].dtype == np.uint8 and sent[0]["fc1.lam:bits"].nbytes == 1  # 3 bits -> 1 byte
    out = aggregate(sent, WEIGHTS, BROADCAST, "mode", mode_confidence=0.9)
    # signs: client 1 (+, −, +), client 2 (−, +, +); weighted votes −0.5, 0.5, 1 → clipped to 0.9
    np.testing.assert_allclose(out["fc1.lam"], np.arctanh([[-0.5, 0.5, 0.9]]), rtol=1e-6)
    np.testing.assert_allclose(out["fc1.bias"], [4.25])


def test_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(UPLOADS, WEIGHTS, BROADCAST, "median")
    with pytest.raises(ValueError, match="at least one client"):
        aggregate([], [], BROADCAST, "mean")


def test_iid_shards_partition_and_label_skew():
    labels = np.repeat([0, 1], 30)
    iid = split_shards(labels, 3, "iid", seed=1)
    assert sorted(np.concatenate(iid).tolist()) == list(range(60))
    skewed = split_shards(labels, 2, "label", skew=0.9, seed=1)
    assert [float((labels[s] == k).mean()) for k, s in enumerate(skewed)] == [0.9, 0.9]
    assert not set(skewed[0].tolist()) & set(skewed[1].tolist())


def test_zero_clients_or_empty_shards_are_rejected():
    with pytest.raises(ValueError, match="at least one client"):
        split_shards(np.zeros(10), 0)
    with pytest.raises(ValueError, match="cannot give 5 clients data"):
        split_shards(np.zeros(3), 5)
    with pytest.raises(ValueError, match="n_clients must be an int >= 1"):
        FedConfig(n_clients=0)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        FedConfig(aggregation="sum")


def test_missing_flower_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'sbnn\[federated\]'"):
        fed.run_simulation("unused.npz", FedConfig())


def test_federation_data_round_trip(tmp_path, gen):
    codes = torch.randint(0, 2, (7, 13), generator=gen).float()
    y = torch.arange(7)
    path = fed.write_federation_data(tmp_path / "d.npz", codes, y, codes[:3], y[:3])
    back = fed.load_federation_data(path)
    assert torch.equal(back[0], codes) and torch.equal(back[1], y) and torch.equal(back[2], codes[:3])
    with pytest.raises(ValueError, match=r"must be \[N, n_latent\] in \{0, 1\}"):
        fed.write_federation_data(tmp_path / "e.npz", codes * 0.5, y, codes, y)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the federated extra (flwr[simulation])")
def test_one_simulated_round_on_two_clients_is_the_weighted_average(tmp_path, gen):
    z = torch.randint(0, 2, (30, 12), generator=gen).float()
    y = z[:, 0].long()
    path = fed.write_federation_data(tmp_path / "codes.npz", z, y, z[:10], y[:10])
    cfg = FedConfig(n_clients=2, rounds=1, hidden=4, aggregation="mean")
    log = fed.run_simulation(path, cfg)
    weights = log["last_weights"]
    assert sorted(weights) == [15.0, 15.0]  # 30 examples in two IID shards
    uploads = log["last_uploads"]
    for name, init in log["initial"].items():
        by_hand = (weights[0] * uploads[0][name] + weights[1] * uploads[1][name]) / (weights[0] + weights[1])
        np.testing.assert_allclose(log["arrays"][name], by_hand, rtol=1e-6, atol=1e-7)
        # every client trained; the mean itself may equal the start (one Adam step per client moves a
        # 2-class bias by ±lr, and opposite signs cancel)
        for k, up in enumerate(uploads):
            assert not np.array_equal(up[name], init), f"client {k} did not change {name}"
    assert len(log["accuracy"]) == 2 and log["uplink_bytes"][0] > 0 and log["downlink_bytes"][0] > 0
