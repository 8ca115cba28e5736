"""mimo.protos.contract: the request check shared by server and client."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from mimo.protos.contract import Contract, InputRule


def _ids_contract() -> Contract:
    rule = InputRule("text", "INT32", (-1, -1), id_range=(0, 10000))
    return Contract("qa", [rule], ["answer"], None, max_batch_size=0)


def test_broadcast_tensor_is_checked_by_the_values_it_stores():
    # TF Serving's one value for a whole shape arrives as a broadcast view; checking it element by
    # element was linear in the shape (14.5 s for 2**35 elements, on the event loop), and wording a
    # bad id allocated per element.
    contract = _ids_contract()
    good = np.broadcast_to(np.int32(7), (1, 2**30))
    started = time.perf_counter()
    assert contract.problems({"text": good}) == []
    assert time.perf_counter() - started < 0.05
    bad = np.broadcast_to(np.int32(10000), (1, 2**22))
    tracemalloc.start()
    try:
        problems = contract.problems({"text": bad})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems == ["input 'text': token id 10000 at [0, 0] is outside the vocabulary [0, 10000)"]
    assert peak < 1 << 20
