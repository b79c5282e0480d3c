r"""Bias–variance metrics of a gradient estimator against a reference gradient ``g``.

For ``N`` single-sample estimates ``ĝ_i`` (flattened over a group of parameters):

- relative bias ``‖E ĝ − g‖ / ‖g‖``, estimated without its Monte Carlo inflation:
  ``‖ḡ − g‖² − tr Var(ĝ)/N`` is unbiased for ``‖E ĝ − g‖²`` (clipped at 0);
- ``bias_floor = sqrt(tr Var(ĝ)/N + tr Var_ref/N_ref)/‖g‖``: the Monte Carlo error of that bias
  (the resolution below which a bias cannot be told from 0);
- relative variance ``tr Var(ĝ) / ‖g‖²``;
- cosine similarity: ``E cos(ĝ, g)`` for single samples, and ``cos(ḡ, g)`` of the mean;
- relative RMSE of an average of ``n`` samples, ``sqrt(bias² + variance/n)`` (exact for
  independent samples).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = ["GradientMetrics", "gradient_metrics"]


@dataclass(frozen=True)
class GradientMetrics:
    bias: float
    bias_floor: float
    variance: float
    cosine: float
    mean_cosine: float
    rmse: dict[int, float]
    n_samples: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rmse"] = {str(k): v for k, v in self.rmse.items()}
        return d


def gradient_metrics(
    samples: Tensor,
    reference: Tensor,
    *,
    reference_variance: float = 0.0,
    reference_samples: int | None = None,
    rmse_counts: tuple[int, ...] = (1, 4, 16, 64, 256, 1024),
) -> GradientMetrics:
    """Metrics of ``samples [N, P]`` against ``reference [P]`` (see the module docstring).

    ``reference_variance`` (``tr Var`` of one reference sample) and ``reference_samples`` account
    for a sampled reference's own error in ``bias`` and ``bias_floor``.
    """
    if samples.dim() != 2 or reference.shape != samples.shape[1:]:
        raise ValueError(f"samples must be [N, P] and reference [P]; got {tuple(samples.shape)} and {tuple(reference.shape)}")
    n = samples.shape[0]
    if n < 2:
        raise ValueError("need at least 2 samples to estimate a variance")
    samples, reference = samples.double(), reference.double()
    norm2 = float(reference.square().sum())
    if norm2 == 0.0:
        raise ValueError("the reference gradient is zero: relative metrics are undefined for this parameter group")
    mean = samples.mean(0)
    trace_var = float(samples.var(0).sum())
    mc = trace_var / n + (reference_variance / reference_samples if reference_samples else 0.0)
    bias2 = max(float((mean - reference).square().sum()) - mc, 0.0)
    cos = torch.nn.functional.cosine_similarity(samples, reference[None], dim=1, eps=1e-300)
    mean_cos = torch.nn.functional.cosine_similarity(mean, reference, dim=0, eps=1e-300)
    variance = trace_var / norm2
    bias = math.sqrt(bias2 / norm2)
    return GradientMetrics(
        bias=bias,
        bias_floor=math.sqrt(mc / norm2),
        variance=variance,
        cosine=float(cos.mean()),
        mean_cosine=float(mean_cos),
        rmse={k: math.sqrt(bias**2 + variance / k) for k in rmse_counts},
        n_samples=n,
    )
