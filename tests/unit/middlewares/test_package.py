"""`middlewares` exports: every public name imports, in a fresh interpreter, in either import order."""

from __future__ import annotations

import subprocess
import sys

import pytest

import middlewares


def test_every_name_in_all_is_importable() -> None:
    missing = [name for name in middlewares.__all__ if getattr(middlewares, name, None) is None]
    assert missing == []


@pytest.mark.parametrize("first", ["middlewares", "alpha_streaming"])
def test_the_packages_import_each_other_without_a_cycle(first: str) -> None:
    """Each package's modules import the other's; a fresh interpreter catches an import cycle."""
    code = f"import {first}; from middlewares import *; import middlewares; print(len(middlewares.__all__))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(middlewares.__all__)
