"""The README's python blocks run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _is_estimator_check(block: str) -> bool:
    return "diag.exact_gradient" in block


def test_readme_python_blocks_run():
    blocks = [b for b in _blocks() if not _is_estimator_check(b)]
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:  # the API tour's blocks build on each other, as a reader would run them
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["probs"].shape == (8, 10)


def test_readme_estimator_check_runs_alone_and_resolves_its_bias():
    """The "Check the estimators" block runs in a fresh namespace and prints biases above their floor."""
    (block,) = [b for b in _blocks() if _is_estimator_check(b)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {})
    rows = re.findall(r"^(\w+)\s+relative bias ([\d.]+) ± ([\d.]+) \(Monte Carlo floor\), cosine ([-\d.]+)$", out.getvalue(), re.M)
    assert [r[0] for r in rows] == ["st", "iwst"], out.getvalue()
    for name, bias, floor, cosine in rows:
        # a printed bias must be resolved: above its own Monte Carlo error
        assert float(bias) > float(floor) > 0, (name, bias, floor)
        assert float(cosine) > 0.5, (name, cosine)
