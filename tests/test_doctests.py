"""The examples in docstrings are part of the documentation: they must stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

ROOTS = ("vouch.core", "vouch.daemon", "vouch.probes", "vouch.rollout", "vouch.loadtests")
SKIP = {"vouch.daemon.__main__"}


def modules() -> list[str]:
    found = []
    for root in ROOTS:
        package = importlib.import_module(root)
        found.append(root)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{root}."):
            if info.name not in SKIP:
                found.append(info.name)
    return found


@pytest.mark.parametrize("name", modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
