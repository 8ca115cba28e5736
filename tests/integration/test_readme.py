"""The README's ```python blocks run as written: call blocks against the session's live server
(its address in place of localhost:8500), export blocks into a temporary repository that a
server then serves. A block that raises fails its test."""

from __future__ import annotations

import inspect
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from client_support import raw_infer
from helpers import start_server
from mimo.client import Client

README = Path(__file__).resolve().parents[2] / "README.md"
ADDRESS = '"localhost:8500"'
REPOSITORY = 'repository="models"'


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


BLOCKS = python_blocks()
EXPORT_BLOCKS = [b for b in BLOCKS if "mimo.export" in b]
CALL_BLOCKS = [b for b in BLOCKS if "mimo.export" not in b]


def run_block(code: str, old: str, new: str) -> dict:
    """Run one block with `old` replaced by `new` (which must occur: a README that moved on
    must fail here, not run against the wrong place); returns the block's variables."""
    assert old in code, f"the README block no longer contains {old}:\n{code}"
    namespace = {"__name__": "__readme__"}
    exec(compile(code.replace(old, new), str(README), "exec"), namespace)
    return namespace


def test_the_readme_curl_examples_answer(server):
    """The ```bash block of curl calls runs against the live server's HTTP port, and every call
    answers what the README says it does (no error body, the health check's 200)."""
    [block] = [b for b in re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.S | re.M) if "curl" in b]
    assert "localhost:8501" in block
    script = block.replace("localhost:8501", server.http_address)
    done = subprocess.run(["bash", "-c", "set -eo pipefail\n" + script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("200\n") and '"error"' not in out, out[:2000]
    assert '"name":"mlp"' in out and '"model_name":"qa"' in out and out.count('"predictions"') == 1
    assert '"outputs":[[' in out and '"signature_def"' in out


def test_the_readme_shows_calling_and_exporting():
    assert CALL_BLOCKS and EXPORT_BLOCKS


@pytest.mark.parametrize("index", range(len(CALL_BLOCKS)))
def test_call_blocks_run_against_the_server(server, index):
    run_block(CALL_BLOCKS[index], ADDRESS, repr(server.address))


def test_call_it_gives_the_heads_it_promises(server):
    [code] = [b for b in CALL_BLOCKS if 'predict("posts"' in b]
    found = run_block(code, ADDRESS, repr(server.address))
    heads, answer = found["heads"], found["answer"]
    assert {k: v.shape for k, v in heads.items()} == {"age": (2, 1), "income": (2, 10), "gender": (2, 1)}
    assert answer.shape == (2, 500) and answer.dtype == np.float32
    # The block's int64 ids were sent as the model's INT32: the same answer as INT32 ids.
    assert found["tokens"].dtype == np.int64
    want = raw_infer(server.address, "posts", {"posts": found["tokens"].astype(np.int32)})
    for name in want:
        np.testing.assert_array_equal(heads[name], want[name])


def _export_model_api() -> bool:
    """Whether mimo.export offers export_model(model, name, repository=...) (the exporter for
    live models); importing it loads TensorFlow, so this runs in the test, not at collection."""
    import mimo.export

    export_model = getattr(mimo.export, "export_model", None)
    return export_model is not None and "repository" in inspect.signature(export_model).parameters


@pytest.mark.parametrize("index", range(len(EXPORT_BLOCKS)))
def test_export_blocks_write_a_model_the_server_serves(tmp_path, index):
    if not _export_model_api():
        pytest.skip("mimo.export has no export_model(model, name, repository=...) yet")
    repository = tmp_path / "models"
    found = run_block(EXPORT_BLOCKS[index], REPOSITORY, f"repository={str(repository)!r}")
    assert isinstance(found["facts"], dict)
    assert (repository / "mine" / "1").is_dir() and (repository / "mine" / "model.json").is_file()
    thread = start_server(repository)
    try:
        with Client(thread.address, timeout=60) as client:
            meta = client.metadata("mine")
            words = meta.inputs["words"]
            assert (words.datatype, words.shape, words.id_range) == ("INT32", (-1, -1), (0, 1000))
            assert list(meta.outputs) == ["score"]
            score = client.predict("mine", words=np.random.default_rng(0).integers(0, 1000, (3, 20)))["score"]
            assert score.shape == (3, 1) and np.all((score >= 0) & (score <= 1))
    finally:
        thread.stop()
