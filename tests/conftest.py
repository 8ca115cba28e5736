"""Session fixtures: one small export of all seven models, and in-process servers on port 0.

Set MIMO_TEST_REPOSITORY to a repository exported with the same small sizes to skip the export
while iterating locally; CI always exports afresh.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import MODELS, TEST_EXPORT, start_server


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory) -> Path:
    reuse = os.environ.get("MIMO_TEST_REPOSITORY")
    if reuse:
        return Path(reuse)
    from mimo.export.notebook import ExportOptions, export_notebook_model

    out = tmp_path_factory.mktemp("repository")
    options = ExportOptions(out=out, **TEST_EXPORT)
    for name in MODELS:
        export_notebook_model(name, options)
    return out


@pytest.fixture(scope="session")
def server(exported_repo):
    """The default server: ONNX Runtime backend, batching on."""
    thread = start_server(exported_repo)
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def tf_server(exported_repo):
    thread = start_server(exported_repo, backend="tensorflow")
    yield thread
    thread.stop()
