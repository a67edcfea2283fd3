"""Device, precision and thread choices; Ctrl-C and the non-finite stop."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import pytest
import torch

from pmalopti.errors import UserError
from pmalopti.runtime.device import autocast, canonical_precision, resolve_device
from pmalopti.runtime.stop import (
    StopOnSigint,
    TrainingDiverged,
    check_finite,
    check_finite_weights,
)
from pmalopti.runtime.threads import THREADS_ENV, auto_threads, torch_threads, usable_cores


def test_auto_device_is_cpu_without_cuda_and_cuda_without_a_gpu_names_the_field():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"model\.device: cuda was requested"):
        resolve_device("cuda", "model.device")


def test_none_is_the_old_spelling_of_float32():
    assert canonical_precision("none") == "float32"
    assert canonical_precision("bfloat16") == "bfloat16"


def test_precision_float32_and_auto_on_cpu_do_not_autocast_and_bfloat16_does():
    cpu = torch.device("cpu")
    assert isinstance(autocast(cpu, "float32"), contextlib.nullcontext)
    assert isinstance(autocast(cpu, "auto"), contextlib.nullcontext)
    assert isinstance(autocast(cpu, "none"), contextlib.nullcontext)
    a = torch.randn(4, 4)
    with autocast(cpu, "bfloat16"):
        assert (a @ a).dtype == torch.bfloat16


def test_auto_threads_leave_one_core_free_and_obey_the_environment(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert auto_threads() == max(usable_cores() - 1, 1)
    monkeypatch.setenv(THREADS_ENV, "3")
    assert auto_threads() == 3
    for bad in ("0", "many", "10000000"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ValueError, match=THREADS_ENV):
            auto_threads()


def test_torch_threads_sets_and_restores_and_refuses_absurd_counts():
    before = torch.get_num_threads()
    with torch_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be between"), torch_threads(10000000):
        pass
    assert usable_cores() <= (os.cpu_count() or 1)


def test_a_non_finite_loss_names_the_step_and_the_last_good_checkpoint(tmp_path):
    check_finite(3, {"loss": 1.0, "grad_norm": 2.0}, None)
    with pytest.raises(TrainingDiverged, match="diverged at step 4: loss = nan") as exc:
        check_finite(4, {"loss": float("nan"), "grad_norm": 1.0}, tmp_path / "checkpoint-2")
    assert "checkpoint-2" in str(exc.value) and isinstance(exc.value, UserError)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        check_finite(1, {"grad_norm": float("inf")}, None)


def test_non_finite_weights_are_caught_before_a_save():
    layer = torch.nn.Linear(2, 2)
    check_finite_weights(layer, 1, None)
    with torch.no_grad():
        layer.bias[0] = float("nan")
    with pytest.raises(TrainingDiverged, match="step 5: parameter bias is not finite"):
        check_finite_weights(layer, 5, None)


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need the main thread"
)
def test_first_ctrl_c_requests_a_stop_the_second_aborts_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with StopOnSigint() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
