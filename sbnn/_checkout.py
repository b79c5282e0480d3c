"""``sbnn.kernels`` when ``sbnn`` is imported from a source checkout.

Installed, the top-level ``kernels/`` folder becomes the subpackage ``sbnn/kernels/``
(``[tool.setuptools.package-dir]`` in ``pyproject.toml``). In a checkout it sits beside ``sbnn/``,
so when the checkout's ``sbnn`` is the one imported (``python -m pytest`` run from a checkout puts
the checkout first on ``sys.path``, whatever is installed) ``sbnn.kernels`` must come from the
checkout's ``kernels/`` too. :func:`install_kernels_finder` adds a finder for exactly that one
name, and only in that layout; an installed ``sbnn`` is left untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

__all__ = ["install_kernels_finder"]

KERNELS = "sbnn.kernels"


class CheckoutKernelsFinder(importlib.abc.MetaPathFinder):
    """Finds ``sbnn.kernels`` in a checkout's top-level ``kernels/`` folder, and nothing else.

    Args:
        folder: the checkout's ``kernels/`` folder (holding ``__init__.py``).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != KERNELS:
            return None
        # submodule_search_locations makes it a package: sbnn.kernels.api etc. then resolve in it
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)]
        )


def install_kernels_finder(package_dir: Path | None = None) -> bool:
    """Map ``sbnn.kernels`` to ``<package_dir>/../kernels`` when ``sbnn`` runs from a checkout.

    Args:
        package_dir: the folder of the imported ``sbnn`` package (default: this module's).

    Returns:
        ``True`` when the finder is in place (a checkout), ``False`` for an installed layout
        (``sbnn/kernels/`` present) or a tree without ``kernels/``.
    """
    if package_dir is None:
        package_dir = Path(__file__).resolve().parent
    if (package_dir / "kernels" / "__init__.py").is_file():
        return False  # installed layout: the ordinary import system finds it
    folder = package_dir.parent / "kernels"
    if not (folder / "__init__.py").is_file():
        return False
    if not any(isinstance(f, CheckoutKernelsFinder) for f in sys.meta_path):
        # First, so that the checkout's kernels win over another install's mapping of the same
        # name (an editable install of a different checkout): sbnn and sbnn.kernels must match.
        sys.meta_path.insert(0, CheckoutKernelsFinder(folder))
    return True
