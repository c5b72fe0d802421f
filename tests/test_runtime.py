"""Thread settings (runtime.py): the wait policy is a default the environment can override, and
threads=auto follows OMP_NUM_THREADS, else the CPUs a job may use."""

from __future__ import annotations

import os

import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.runtime import available_cpus, default_wait_policy, set_threads


def test_wait_policy_is_a_default_only(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    default_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    default_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_auto_threads_follow_omp_num_threads_then_the_allocation(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads("auto") == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        assert available_cpus() == 1 and set_threads("auto") == 1
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        with pytest.raises(InputError, match="threads=0 must be an integer >= 1 or auto"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)
