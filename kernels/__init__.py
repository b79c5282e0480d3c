"""Event-driven Numba kernels for deployed SBNNs (installed as :mod:`sbnn.kernels`).

The kernels and their validated API arrive with the kernels issue; this package is importable now
so that the layout (``kernels/`` installed as ``sbnn.kernels``) is fixed from the start.
"""

__all__: list[str] = []
