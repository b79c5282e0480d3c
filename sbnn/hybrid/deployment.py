"""FedHyBNN on Flower's deployment engine: a SuperLink and SuperNodes as local processes.

:func:`run_deployment` starts ``flower-superlink`` and one ``flower-supernode`` per client on
free localhost ports, submits the run with ``flwr run`` (the apps of :mod:`sbnn.hybrid.flower_app`),
waits for the ServerApp's result file within ``timeout`` seconds, and always stops every process it
started (SIGTERM to each process group, SIGKILL after a grace period), including the
ServerApp/ClientApp processes the SuperLink and SuperNodes spawn.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .federated import FedConfig, load_federation_data, require_flower, split_shards

__all__ = ["run_deployment", "write_app_dir"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else ("true" if v is True else "false" if v is False else repr(v))


def write_app_dir(app_dir: Path, run_config: dict[str, Any]) -> Path:
    """Write a Flower App (``pyproject.toml`` + a one-line module) pointing at :mod:`sbnn.hybrid.flower_app`."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "fedhybnn_app.py").write_text(
        "from sbnn.hybrid import flower_app\n\nserver_app = flower_app.server_app\nclient_app = flower_app.client_app\n"
    )
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in run_config.items())
    (app_dir / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "fedhybnn"\nversion = "1.0.0"\ndependencies = []\n\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["."]\n\n'
        '[tool.flwr.app]\npublisher = "sbnn"\n\n'
        '[tool.flwr.app.components]\nserverapp = "fedhybnn_app:server_app"\nclientapp = "fedhybnn_app:client_app"\n\n'
        f"[tool.flwr.app.config]\n{config}\n"
    )
    return app_dir


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        # the group may hold children (flwr-serverapp, flwr-clientapp) that outlive the leader
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if path is None:
        raise ImportError(f"Flower's {name} command is missing; install the federated extra: pip install 'sbnn[federated]'")
    return path


def run_deployment(data_path: str | Path, cfg: FedConfig, workdir: str | Path, *, timeout: float = 300.0) -> dict[str, Any]:
    """Run FedHyBNN on a local SuperLink with ``cfg.n_clients`` SuperNodes; returns the ServerApp's log.

    Args:
        data_path: codes file from :func:`~sbnn.hybrid.federated.write_federation_data`.
        cfg: the run.
        workdir: scratch directory (Flower home, app, logs, result).
        timeout: seconds for the whole run; on expiry every process is stopped and a
            ``TimeoutError`` raised.

    Returns:
        ``{"accuracy": [...], "uplink_bytes": [...], ..., "pids": [...]}`` — ``pids`` lists the
        process-group leaders that were started (all stopped on return).

    Raises:
        ImportError: Flower is missing (the message says how to install it).
        ValueError: bad data or split, before any process starts.
        TimeoutError, RuntimeError: the run did not finish, or a process failed (logs named).
    """
    require_flower()
    data_path = Path(data_path).resolve()
    _, y_tr, _, _ = load_federation_data(data_path)
    split_shards(y_tr.numpy(), cfg.n_clients, cfg.split, cfg.skew, cfg.seed)
    tools = {n: _tool(n) for n in ("flower-superlink", "flower-supernode", "flwr")}
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    result = work / "result.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "FLWR_HOME": str(work / "flwr_home"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # Flower >= 1.40 serves the Runtime, Control and Fleet APIs on one HTTP port
    link = _free_port()
    (work / "flwr_home").mkdir(exist_ok=True)
    (work / "flwr_home" / "config.toml").write_text(
        f'[superlink]\ndefault = "local-deploy"\n\n[superlink.local-deploy]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    app = write_app_dir(work / "app", {**cfg.to_flower(), "data_path": str(data_path), "result_path": str(result)})
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, cmd: list[str]) -> None:
        log = open(work / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True))

    try:
        start("superlink", [tools["flower-superlink"], "--insecure", "--host", "127.0.0.1", "--port", str(link),
                            "--database", str(work / "state.db")])
        for k in range(cfg.n_clients):
            start(f"supernode{k}", [tools["flower-supernode"], "--insecure", "--superlink", f"127.0.0.1:{link}",
                                    "--host", "127.0.0.1", "--port", str(_free_port()),
                                    "--node-config", f"partition-id={k} num-partitions={cfg.n_clients}"])
        deadline = time.monotonic() + timeout
        submitted = False
        while time.monotonic() < deadline:
            for p, log in zip(procs, logs):
                if p.poll() is not None:
                    raise RuntimeError(f"a Flower process exited with status {p.returncode}; see {log.name}")
            if not submitted:
                run = subprocess.run([tools["flwr"], "run", str(app), "local-deploy"], env=env, cwd=work,
                                     capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
                (work / "flwr_run.log").write_text(run.stdout + run.stderr)
                if run.returncode == 0:
                    submitted = True
                else:
                    time.sleep(1.0)  # the SuperLink may not listen yet
                    continue
            if result.exists():
                out = json.loads(result.read_text())
                out["pids"] = [p.pid for p in procs]
                return out
            time.sleep(0.5)
        raise TimeoutError(f"FedHyBNN deployment run did not finish in {timeout} s; logs in {work}")
    finally:
        _stop(procs)
        for log in logs:
            log.close()
