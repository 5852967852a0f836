"""Imports of optional dependencies that say which extra brings them."""

from __future__ import annotations

import importlib
from types import ModuleType

# How to get each extra's packages. torch is installed by the user (its CPU
# and CUDA builds come from different indexes), or PyPI's default through [torch].
_HOW_TO_INSTALL = {
    "torch": "install the torch build for this machine, or `pip install 'pyallreduce[torch]'` for PyPI's default",
    "bench": "`pip install 'pyallreduce[bench]'`",
    "examples": "`pip install 'pyallreduce[examples]'`",
}


def require(module: str, extra: str, needed_by: str) -> ModuleType:
    """``import module``, or a ModuleNotFoundError naming ``needed_by`` and the
    extra that installs it. Only the absence of ``module`` itself is caught:
    a broken installation still shows its own error."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name != top:
            raise
        raise ModuleNotFoundError(
            f"{needed_by} needs {top}, which is not installed: {_HOW_TO_INSTALL[extra]}", name=top
        ) from exc
