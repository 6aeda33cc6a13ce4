"""Scorer tests run torch on one thread.

The test machines have 2 cores shared by several jobs; torch's OpenMP workers then spin
against each other, and a 15 s run took 70 s. The previous count is restored afterwards.
"""
from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
