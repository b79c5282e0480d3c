r"""FedHyBNN on Flower: federated training of SBNN heads on frozen-encoder codes.

Flower (the ``flwr`` package, extra ``federated``) runs the federation; sbnn only supplies the
``ClientApp`` (local ELBO training of an :class:`~sbnn.hybrid.heads.SBNNHead` on the client's
shard of codes), the ``ServerApp`` and a FedAvg strategy whose aggregation of the posterior is one of

``mean``
    FedAvg on the natural parameters: ``λ = Σ_k n_k λ_k / Σ_k n_k`` (and the same weighted mean of
    the float scales and biases).
``product``
    Product of the client posteriors: in round ``r`` every client trains with the broadcast global
    posterior ``λ_r`` as its prior, so ``q_k ∝ p_r · t_k`` and ``Π_k q_k / p_r^{K−1}``, i.e.

    .. math:: \lambda_{r+1} = \sum_k \lambda_k - (K - 1)\,\lambda_r .
``mode``
    Clients send 1 bit per weight, ``sign(λ_k)`` packed 8 to a byte, plus the float scales and
    biases. The server sets ``λ = atanh(clip(m, −ρ, ρ))`` with ``m`` the example-weighted mean
    sign, so the global posterior's mean ``tanh λ`` is the clients' vote.

Bytes per round are counted from the arrays Flower carries (``ArrayRecord.count_bytes``), uplink
(client → server, summed over clients) and downlink (server → clients).

The clients hold binary codes, not images: the frozen encoder runs once on the device before
training (HyBNN's feature-extraction phase), here :func:`write_federation_data`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .heads import SBNNHead
from .training import accuracy, fit_classifier

__all__ = [
    "AGGREGATIONS",
    "FedConfig",
    "require_flower",
    "split_shards",
    "write_federation_data",
    "load_federation_data",
    "aggregate",
    "head_arrays",
    "make_strategy",
    "make_client_app",
    "make_server_app",
    "server_main",
    "run_simulation",
]

AGGREGATIONS = ("mean", "product", "mode")
_INSTALL_HINT = "install the federated extra: pip install 'sbnn[federated]'"


def require_flower() -> None:
    """Raise an ImportError saying how to install Flower when ``flwr`` is missing."""
    if importlib.util.find_spec("flwr") is None:
        raise ImportError(f"FedHyBNN needs Flower (the flwr package), which is not installed; {_INSTALL_HINT}")


@dataclass(frozen=True)
class FedConfig:
    """One FedHyBNN run.

    Args:
        n_clients: number of clients (SuperNodes), ``≥ 1``.
        rounds: federated rounds.
        aggregation: ``mean``, ``product`` or ``mode``.
        split: ``iid`` shards or ``label`` skew (each client holds mostly one class).
        skew: fraction of a client's examples from its majority class under ``label`` split.
        local_epochs, lr, batch_size, kl_weight: the client's training (see :func:`fit_classifier`).
        hidden: the head's hidden units.
        mode_confidence: ``ρ`` of the ``mode`` aggregation, in ``(0, 1)``.
        seed: seed of the split, the initial head and the local training.
    """

    n_clients: int = 3
    rounds: int = 20
    aggregation: Literal["mean", "product", "mode"] = "mean"
    split: Literal["iid", "label"] = "iid"
    skew: float = 0.9
    local_epochs: int = 1
    lr: float = 0.1
    batch_size: int = 32
    kl_weight: float = 0.01
    hidden: int = 128
    mode_confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.n_clients, int) or self.n_clients < 1:
            raise ValueError(f"FedConfig: n_clients must be an int >= 1, got {self.n_clients!r}")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"FedConfig: rounds must be an int >= 1, got {self.rounds!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"FedConfig: aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.split not in ("iid", "label"):
            raise ValueError(f"FedConfig: split must be 'iid' or 'label', got {self.split!r}")
        if not 0.0 < self.mode_confidence < 1.0:
            raise ValueError(f"FedConfig: mode_confidence must be in (0, 1), got {self.mode_confidence!r}")
        if not 0.0 <= self.skew <= 1.0:
            raise ValueError(f"FedConfig: skew must be in [0, 1], got {self.skew!r}")

    def to_flower(self) -> dict[str, Any]:
        """As a flat dict of Flower config values (str/int/float)."""
        return asdict(self)

    @classmethod
    def from_flower(cls, run_config: dict[str, Any]) -> "FedConfig":
        """Rebuild from a Flower run config (extra keys such as ``data_path`` are ignored)."""
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in run_config.items() if k in fields})


# -- data ------------------------------------------------------------------------------------------
def split_shards(labels: np.ndarray, n_clients: int, split: str = "iid", skew: float = 0.9, seed: int = 0) -> list[np.ndarray]:
    """Index shards of a labelled set: ``iid`` (a random partition) or ``label``-skewed.

    Under ``label``, client ``k`` takes a ``skew`` fraction of its ``⌊N/K⌋`` examples from class
    ``k mod C`` and the rest at random from the other examples.

    Raises:
        ValueError: ``n_clients < 1``, or a shard would be empty.
    """
    labels = np.asarray(labels)
    if not isinstance(n_clients, int) or n_clients < 1:
        raise ValueError(f"split_shards: need at least one client, got n_clients={n_clients!r}")
    if len(labels) < n_clients:
        raise ValueError(f"split_shards: {len(labels)} examples cannot give {n_clients} clients data each")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    if split == "iid":
        return [np.sort(s) for s in np.array_split(perm, n_clients)]
    if split != "label":
        raise ValueError(f"split_shards: split must be 'iid' or 'label', got {split!r}")
    classes = np.unique(labels)
    size = len(labels) // n_clients
    free = list(perm)
    shards = []
    for k in range(n_clients):
        major = classes[k % len(classes)]
        pool = [i for i in free if labels[i] == major]
        take = pool[: int(round(skew * size))]
        taken = set(take)
        rest = [i for i in free if i not in taken][: size - len(take)]
        shard = np.sort(np.array(take + rest, dtype=np.int64))
        used = set(shard.tolist())
        free = [i for i in free if i not in used]
        shards.append(shard)
    if any(len(s) == 0 for s in shards):
        raise ValueError("split_shards: a client got no data; use fewer clients")
    return shards


def write_federation_data(path: str | Path, codes_train: Tensor, y_train: Tensor, codes_test: Tensor, y_test: Tensor) -> Path:
    """Save binary codes and labels as an ``.npz`` (bit-packed codes, no pickle) for the clients."""
    for name, codes in (("codes_train", codes_train), ("codes_test", codes_test)):
        if codes.dim() != 2 or not bool(((codes == 0) | (codes == 1)).all()):
            raise ValueError(f"write_federation_data: {name} must be [N, n_latent] in {{0, 1}}, got {tuple(codes.shape)}")
    path = Path(path)
    np.savez(
        path,
        n_latent=np.int64(codes_train.shape[1]),
        codes_train=np.packbits(codes_train.numpy().astype(np.uint8), axis=1, bitorder="little"),
        y_train=y_train.numpy().astype(np.int64),
        codes_test=np.packbits(codes_test.numpy().astype(np.uint8), axis=1, bitorder="little"),
        y_test=y_test.numpy().astype(np.int64),
    )
    return path


def load_federation_data(path: str | Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inverse of :func:`write_federation_data`: ``(codes_train, y_train, codes_test, y_test)``."""
    with np.load(Path(path), allow_pickle=False) as f:
        n = int(f["n_latent"])
        unpack = lambda a: torch.tensor(np.unpackbits(a, axis=1, count=n, bitorder="little"), dtype=torch.float32)  # noqa: E731
        return unpack(f["codes_train"]), torch.tensor(f["y_train"]), unpack(f["codes_test"]), torch.tensor(f["y_test"])


# -- parameters and aggregation ---------------------------------------------------------------------
def head_arrays(head: SBNNHead) -> dict[str, np.ndarray]:
    """The head's trainable parameters (``λ``, ``log α``, biases) as float32 numpy arrays, by name."""
    return {k: v.detach().cpu().numpy().astype(np.float32).copy() for k, v in head.named_parameters()}


def load_head_arrays(head: SBNNHead, arrays: dict[str, np.ndarray]) -> None:
    """Copy ``arrays`` (as from :func:`head_arrays`) into ``head``; every name must match."""
    params = dict(head.named_parameters())
    if set(arrays) != set(params):
        raise ValueError(f"head parameters {sorted(params)} do not match the received {sorted(arrays)}")
    with torch.no_grad():
        for k, v in arrays.items():
            params[k].copy_(torch.as_tensor(v))


def _is_lam(name: str) -> bool:
    return name.endswith(".lam")


def encode_upload(arrays: dict[str, np.ndarray], aggregation: str) -> dict[str, np.ndarray]:
    """What a client sends: the arrays as they are, or for ``mode`` the signs of ``λ`` packed to bits."""
    if aggregation != "mode":
        return arrays
    return {
        (k + ":bits" if _is_lam(k) else k): (np.packbits((v >= 0).reshape(-1), bitorder="little") if _is_lam(k) else v)
        for k, v in arrays.items()
    }


def aggregate(
    uploads: list[dict[str, np.ndarray]],
    weights: list[float],
    broadcast: dict[str, np.ndarray],
    aggregation: str,
    mode_confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Server-side aggregation of client uploads (see the module docstring for the three rules).

    Args:
        uploads: per client, the arrays from :func:`encode_upload`.
        weights: per client, its number of training examples ``n_k``.
        broadcast: the global arrays sent this round (``λ_r``: the prior of ``product``, the shapes
            of ``mode``).
        aggregation: ``mean``, ``product`` or ``mode``.

    Returns:
        The new global arrays, with the names and shapes of ``broadcast``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if not uploads or len(uploads) != len(weights) or sum(weights) <= 0:
        raise ValueError("aggregate: need at least one client upload with a positive example count")
    w = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    out: dict[str, np.ndarray] = {}
    for name, ref in broadcast.items():
        if _is_lam(name) and aggregation == "product":
            k = len(uploads)
            out[name] = (sum(u[name].astype(np.float64) for u in uploads) - (k - 1) * ref.astype(np.float64)).astype(np.float32)
        elif _is_lam(name) and aggregation == "mode":
            signs = [np.unpackbits(u[name + ":bits"], count=ref.size, bitorder="little").reshape(ref.shape) * 2.0 - 1.0 for u in uploads]
            m = sum(wk * s for wk, s in zip(w, signs))
            out[name] = np.arctanh(np.clip(m, -mode_confidence, mode_confidence)).astype(np.float32)
        else:
            out[name] = sum(wk * u[name].astype(np.float64) for wk, u in zip(w, uploads)).astype(np.float32)
    return out


# -- Flower apps -----------------------------------------------------------------------------------
def _client_shard(data_path: str, cfg: FedConfig, partition: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_tr, y_tr, x_te, y_te = load_federation_data(data_path)
    shards = split_shards(y_tr.numpy(), cfg.n_clients, cfg.split, cfg.skew, cfg.seed)
    if not 0 <= partition < len(shards):
        raise ValueError(f"partition-id {partition} outside 0..{len(shards) - 1}")
    idx = torch.as_tensor(shards[partition])
    if len(idx) == 0:
        raise ValueError(f"client {partition} has no data")
    return x_tr[idx], y_tr[idx], x_te, y_te


def _new_head(n_latent: int, cfg: FedConfig) -> SBNNHead:
    torch.manual_seed(cfg.seed)
    return SBNNHead(n_latent, hidden=cfg.hidden)


def make_client_app(data_path: str | Path, cfg: FedConfig):
    """A Flower ``ClientApp``: each node trains the head on its shard (``partition-id`` of its node config)."""
    require_flower()
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()
    data_path = str(data_path)

    def _setup(msg: Message, context: Context):
        part = int(context.node_config["partition-id"])
        x, y, x_te, y_te = _client_shard(data_path, cfg, part)
        head = SBNNHead(x.shape[1], hidden=cfg.hidden)
        received = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        load_head_arrays(head, received)
        return part, head, x, y, x_te, y_te

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        part, head, x, y, _, _ = _setup(msg, context)
        if cfg.aggregation == "product":
            # the broadcast posterior is this round's prior (see the module docstring)
            for layer in (head.fc1, head.fc2):
                layer.set_prior(layer.lam.detach().clone())
        rnd = int(msg.content["config"]["server-round"])
        loss = fit_classifier(head, x, y, epochs=cfg.local_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                              kl_weight=cfg.kl_weight, seed=cfg.seed * 1000 + rnd * 10 + part)
        upload = encode_upload(head_arrays(head), cfg.aggregation)
        content = RecordDict({
            "arrays": ArrayRecord(array_dict={k: _array(v) for k, v in upload.items()}),
            "metrics": MetricRecord({"num-examples": len(y), "train-loss": float(loss[-1])}),
        })
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _, head, _, _, x_te, y_te = _setup(msg, context)
        acc = accuracy(head, x_te, y_te)
        return Message(content=RecordDict({"metrics": MetricRecord({"num-examples": len(y_te), "accuracy": acc})}), reply_to=msg)

    return app


def _array(v: np.ndarray):
    from flwr.app import Array

    return Array(np.ascontiguousarray(v))


def make_strategy(cfg: FedConfig, log: dict[str, list] | None = None):
    """A Flower ``FedAvg`` whose ``aggregate_train`` applies ``cfg.aggregation`` and counts bytes."""
    require_flower()
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    class PosteriorFedAvg(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            self._broadcast = {k: v.numpy() for k, v in arrays.items()}
            messages = list(super().configure_train(server_round, arrays, config, grid))
            if log is not None:
                log.setdefault("downlink_bytes", []).append(arrays.count_bytes() * len(messages))
            return messages

        def aggregate_train(self, server_round, replies):
            valid = [m for m in replies if not m.has_error()]
            for m in replies:
                if m.has_error():
                    raise RuntimeError(f"client {m.metadata.src_node_id} failed in round {server_round}: {m.error.reason}")
            uploads = [{k: v.numpy() for k, v in m.content["arrays"].items()} for m in valid]
            weights = [float(m.content["metrics"]["num-examples"]) for m in valid]
            new = aggregate(uploads, weights, self._broadcast, cfg.aggregation, cfg.mode_confidence)
            if log is not None:
                log.setdefault("uplink_bytes", []).append(sum(m.content["arrays"].count_bytes() for m in valid))
                log.setdefault("uplink_payload_bytes", []).append(sum(sum(v.nbytes for v in u.values()) for u in uploads))
                log["last_uploads"], log["last_weights"], log["last_broadcast"] = uploads, weights, self._broadcast
            metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
            return ArrayRecord(array_dict={k: _array(v) for k, v in new.items()}), metrics

    return PosteriorFedAvg(
        min_train_nodes=cfg.n_clients, min_evaluate_nodes=cfg.n_clients, min_available_nodes=cfg.n_clients,
        fraction_evaluate=0.0,
    )


def server_main(grid, context, data_path: str | Path, cfg: FedConfig, log: dict[str, Any], result_path: str | Path | None = None) -> None:
    """The ServerApp's body: FedAvg-family rounds over the head, centrally evaluated on the test codes.

    ``log`` receives ``accuracy`` (round 0 = initial head), ``uplink_bytes``, ``downlink_bytes`` and
    the final ``arrays``; with ``result_path`` the curves are also written there as JSON.
    """
    from flwr.app import ArrayRecord, MetricRecord

    _, _, x_te, y_te = load_federation_data(data_path)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        head = SBNNHead(x_te.shape[1], hidden=cfg.hidden)
        load_head_arrays(head, {k: v.numpy() for k, v in arrays.items()})
        acc = accuracy(head, x_te, y_te)
        log.setdefault("accuracy", []).append(acc)
        return MetricRecord({"accuracy": acc})

    init = head_arrays(_new_head(x_te.shape[1], cfg))
    log["initial"] = init
    result = make_strategy(cfg, log).start(
        grid=grid, initial_arrays=ArrayRecord(array_dict={k: _array(v) for k, v in init.items()}),
        num_rounds=cfg.rounds, evaluate_fn=evaluate_fn,
    )
    log["arrays"] = {k: v.numpy() for k, v in result.arrays.items()}
    if result_path:
        summary = {k: v for k, v in log.items() if k in ("accuracy", "uplink_bytes", "uplink_payload_bytes", "downlink_bytes")}
        Path(result_path).write_text(json.dumps(summary))


def make_server_app(data_path: str | Path, cfg: FedConfig, log: dict[str, Any], result_path: str | Path | None = None):
    """A Flower ``ServerApp`` running :func:`server_main` (``log`` is filled in place)."""
    require_flower()
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()
    load_federation_data(data_path)  # fail before Flower starts on a bad file

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        server_main(grid, context, data_path, cfg, log, result_path)

    return app


def run_simulation(data_path: str | Path, cfg: FedConfig, *, verbose: bool = False) -> dict[str, list]:
    """Run FedHyBNN with Flower's simulation engine (Ray) on this machine; returns the log.

    Raises:
        ImportError: Flower is not installed (the message says how to install it).
        ValueError: a bad configuration or data file, before any process starts.
    """
    require_flower()
    if importlib.util.find_spec("ray") is None:
        raise ImportError(f"Flower's simulation engine needs Ray; install the federated extra: pip install 'sbnn[federated]'")
    x_tr, y_tr, _, _ = load_federation_data(data_path)
    split_shards(y_tr.numpy(), cfg.n_clients, cfg.split, cfg.skew, cfg.seed)  # fail early on a bad split
    from flwr.simulation import run_simulation as flower_run

    log: dict[str, list] = {}
    flower_run(
        server_app=make_server_app(data_path, cfg, log),
        client_app=make_client_app(data_path, cfg),
        num_supernodes=cfg.n_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 1, "include_dashboard": False}},
        verbose_logging=verbose,
    )
    if "arrays" not in log:
        raise RuntimeError("the Flower simulation ended without a result; rerun with verbose=True for Flower's log")
    return log
