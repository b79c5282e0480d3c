"""Module-level Flower apps for the deployment engine (``flwr run``), configured by the run config.

The run config carries :class:`~sbnn.hybrid.federated.FedConfig`'s fields plus ``data_path`` (the
codes ``.npz``) and ``result_path`` (where the ServerApp writes its JSON log). Flower loads
``server_app`` and ``client_app`` by name; each builds sbnn's app on its first message.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .federated import FedConfig, make_client_app, server_main

__all__ = ["server_app", "client_app"]

server_app = ServerApp()
client_app = ClientApp()
_client_cache: dict[Any, ClientApp] = {}


def _client(context: Context) -> ClientApp:
    key = tuple(sorted(context.run_config.items()))
    if key not in _client_cache:
        _client_cache[key] = make_client_app(str(context.run_config["data_path"]), FedConfig.from_flower(context.run_config))
    return _client_cache[key]


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = FedConfig.from_flower(context.run_config)
    server_main(grid, context, str(context.run_config["data_path"]), cfg, {}, str(context.run_config["result_path"]))


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    return _client(context)(msg, context)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return _client(context)(msg, context)
