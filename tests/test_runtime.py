"""runtime: rank, world and device decisions, tested on CPU under torchrun-style environments."""

import pytest

from unic_cache import UserError
from unic_cache.runtime import choose_device, rank_world


def test_device_decisions_under_torchrun_environments(monkeypatch):
    assert choose_device("auto", cuda_available=False, local_rank=None) == "cpu"
    assert choose_device("auto", cuda_available=False, local_rank=3) == "cpu"  # gloo ranks on CPU
    assert choose_device("auto", cuda_available=True, local_rank=None) == "cuda"
    assert [choose_device("auto", True, r) for r in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert choose_device("cuda", True, 2) == "cuda:2" and choose_device("cuda:5", True, 2) == "cuda:5"
    assert choose_device("cpu", True, 1) == "cpu"
    with pytest.raises(UserError, match="no CUDA device"):
        choose_device("cuda", cuda_available=False, local_rank=0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_world() == (3, 4) and rank_world(1, 2) == (1, 2)
    with pytest.raises(UserError, match="--rank must be"):
        rank_world(4, 4)
