"""Every example script runs against the live server, exits 0 and prints its model's heads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import MODELS
from mimo.client import Client

EXAMPLES = Path(__file__).resolve().parents[2] / "clients" / "examples"


def test_there_is_one_example_per_model_and_the_readme_lists_them():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(MODELS)
    readme = (EXAMPLES / "README.md").read_text()
    for model in MODELS:
        assert f"({model}.py)" in readme


@pytest.mark.parametrize("model", MODELS)
def test_example_runs(server, model):
    out = subprocess.run([sys.executable, str(EXAMPLES / f"{model}.py"), "--target", server.address],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    with Client(server.address) as c:
        heads = list(c.metadata(model).outputs)
    for head in heads:
        assert f"{head}:" in out.stdout, out.stdout
