"""Estimator diagnostics: exact gradients of small networks, bias–variance reports, gradient flow.

- :mod:`.exact`: ``E[L]`` and its exact gradient by enumerating every unit state;
- :mod:`.sampling`: single-sample gradients of each estimator, and the REINFORCE baseline;
- :mod:`.metrics`: relative bias, variance, cosine, RMSE against a reference;
- :mod:`.report`: the estimator × layer report that ``sbnn-diagnose`` prints and plots;
- :mod:`.flow`: gradient-flow statistics of training runs (:class:`GradientFlowMonitor`);
- :mod:`.memory`: the bytes a training step saves for backward.
"""

from .exact import MAX_UNIT_STEPS, NotEnumerableError, check_enumerable, check_inputs, exact_gradient, exact_objective
from .flow import FlowAccumulator, GradientFlowMonitor, layer_statistics
from .memory import saved_for_backward_bytes
from .metrics import GradientMetrics, gradient_metrics
from .sampling import estimator_gradients, reinforce_gradients

__all__ = [
    "MAX_UNIT_STEPS",
    "NotEnumerableError",
    "check_enumerable",
    "check_inputs",
    "exact_objective",
    "exact_gradient",
    "estimator_gradients",
    "reinforce_gradients",
    "GradientMetrics",
    "gradient_metrics",
    "FlowAccumulator",
    "GradientFlowMonitor",
    "layer_statistics",
    "saved_for_backward_bytes",
]
