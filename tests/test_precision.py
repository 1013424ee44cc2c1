"""Counting precision: bf16 only where the CPU computes it in hardware (or on CUDA), named in the
experiment's device line, and counts that agree with fp32 (the agreement the issue asks for)."""
from __future__ import annotations

import pytest
import torch

from core.cnn import runtime
from core.cnn.runtime import Runtime, counting_precision
from core.store import Store


def test_counting_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    assert counting_precision(torch.device("cpu")) == "fp32"
    assert counting_precision(torch.device("cuda", 0)) == "bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert counting_precision(torch.device("cpu")) == "bf16"
    assert runtime.local_runtime("fp32").counting == "fp32"


def test_the_device_line_names_the_counting_precision_and_bad_ones_are_refused():
    assert Runtime(torch.device("cpu"), threads=2, counting="bf16").describe() == \
        "cpu (2 threads; fp32 training, bf16 counting)"
    assert isinstance(Runtime(torch.device("cpu"), counting="bf16").counting_autocast(), torch.autocast)
    with pytest.raises(ValueError, match="precision"):
        Runtime(torch.device("cpu"), counting="fp16")


def test_a_trained_experiment_says_which_precision_served_it(trained_store):
    exp = next(e for e in Store(trained_store).experiments("finished") if e.family == "cnn")
    assert f"{counting_precision(torch.device('cpu'))} counting" in exp.device
