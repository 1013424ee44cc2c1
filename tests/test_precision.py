"""Counting precision: fp32 on the CPU unless bf16 is asked for and the CPU computes it in hardware,
bf16 on CUDA, named in the experiment's device line; the service's own precision changes no count."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.cnn import runtime
from core.cnn.runtime import Runtime, counting_precision
from core.predict import load_counter
from core.store import Store
from tests.builders import bin_jpeg


def test_counting_precision_is_fp32_on_the_cpu_unless_bf16_is_asked_for_and_native(monkeypatch):
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)
    for native in (False, True):
        monkeypatch.setattr(runtime, "native_bf16", lambda native=native: native)
        assert counting_precision(torch.device("cpu")) == "fp32"
        assert counting_precision(torch.device("cuda", 0)) == "bf16"
    monkeypatch.setenv(runtime.PRECISION_ENV, "bf16")
    assert counting_precision(torch.device("cpu")) == "bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)  # emulated bf16 would be slower: not used
    assert counting_precision(torch.device("cpu")) == "fp32"
    assert runtime.local_runtime("bf16").counting == "bf16"  # asked for by name, it is what runs
    monkeypatch.setenv(runtime.PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="precision"):
        counting_precision(torch.device("cpu"))


def test_the_device_line_names_the_counting_precision_and_bad_ones_are_refused():
    assert Runtime(torch.device("cpu"), threads=2, counting="bf16").describe() == \
        "cpu (2 threads; fp32 training, bf16 counting)"
    assert isinstance(Runtime(torch.device("cpu"), counting="bf16").counting_autocast(), torch.autocast)
    with pytest.raises(ValueError, match="precision"):
        Runtime(torch.device("cpu"), counting="fp16")


def test_a_trained_experiment_says_which_precision_served_it(trained_store):
    exp = next(e for e in Store(trained_store).experiments("finished") if e.family == "cnn")
    assert f"{counting_precision(torch.device('cpu'))} counting" in exp.device


def test_the_services_own_precision_changes_no_count(trained_store, monkeypatch):
    """What a user sees from the service as loaded here agrees with fp32: the same count for at least
    99.5% of photos and probabilities within 0.01 (bf16 on this CPU does not, see counting_precision)."""
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)
    store = Store(trained_store)
    exp = next(e for e in store.experiments("finished") if e.is_model and e.family == "cnn")
    photos = [bin_jpeg(k % 6, seed=30_000 + k) for k in range(120)]
    served, reference = load_counter(exp.id, store), load_counter(exp.id, store, precision="fp32")
    a, b = served.count_batch(photos), reference.count_batch(photos)
    assert np.mean([x.count == y.count for x, y in zip(a, b, strict=True)]) >= 0.995
    assert np.abs(np.array([x.probs for x in a]) - np.array([y.probs for y in b])).max() <= 0.01
