"""One engine call's memory is bounded: a call above the limit is refused, before any work, with both figures."""

from __future__ import annotations

import numpy as np
import pytest

from sbnn.kernels import Dense, Engine, Graph, LIF, Synapses, api


def _engine() -> Engine:
    return Engine(Graph((3,), (Dense(Synapses(np.ones((2, 3)), [0.5]), LIF([0.9], [1.0])),)))


def _events(n: int) -> np.ndarray:
    ev = np.zeros(n, dtype=[("t", "<i8"), ("x", "<i8"), ("p", "<i8")])
    ev["t"] = np.arange(n)
    ev["x"] = np.arange(n) % 3
    return ev


def test_run_events_with_a_trillion_steps_is_refused():
    with pytest.raises(ValueError, match=r"Engine.run_events: this call needs about 56,000,000,000,240 bytes .* above the limit of 4,294,967,296"):
        _engine().run_events(_events(3), (3, 1, 1), n_steps=10**12, time_window=1.0)
    with pytest.raises(ValueError, match=r"events_from_tonic: this call needs about 16,000,000,000,\d+ bytes"):
        api.events_from_tonic(_events(3), (3, 1, 1), n_steps=10**12, time_window=1.0)


def test_a_single_count_of_two_billion_is_refused():
    x = np.zeros((1, 1, 3), np.int64)
    x[0, 0, 0] = 2 * 10**9  # 2·10⁹ events of 8 bytes: 16 GB
    with pytest.raises(ValueError, match=r"Engine.run: this call needs about 16,000,000,\d+ bytes .*limit of 4,294,967,296 bytes; pass max_bytes"):
        _engine().run(x)
    with pytest.raises(ValueError, match=r"events_from_dense: this call needs about 16,000,000,016 bytes"):
        api.events_from_dense(x[0])


def test_the_limit_can_be_lowered_and_raised(monkeypatch):
    engine = _engine()
    x = np.ones((4, 1, 3), np.uint8)
    need = engine.call_bytes(4, 12)
    assert need == 8 * (12 + 4 + 1) + 16 * 4 * 2
    with pytest.raises(ValueError, match=rf"needs about {need:,} bytes .* above the limit of {need - 1:,} bytes"):
        engine.run(x, max_bytes=need - 1)
    assert engine.run(x, max_bytes=need).output.tolist() == [[4, 4]]
    monkeypatch.setattr(api, "MAX_CALL_BYTES", need - 1)  # the process-wide default
    with pytest.raises(ValueError, match="above the limit"):
        engine.run(x)
    assert engine.run(x, max_bytes=need).output.tolist() == [[4, 4]]
    with pytest.raises(ValueError, match="max_bytes must be a positive int"):
        engine.run(x, max_bytes=0)
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        engine.run_events(_events(3), (3, 1, 1), n_steps=2.5, time_window=1.0)
