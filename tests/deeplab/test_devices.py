"""A job gets and uses the device it asked for: cuda without a usable GPU is one line, never a silent CPU run;
a rank's GPU is right whether its task sees every GPU of the node or only its own; data workers fit its CPUs.
(No GPU exists here: ``cuda_index`` is a pure function of what a task sees, so both bindings are tested as such.)"""

from __future__ import annotations

import os
import re

import pytest
import torch

from deeplab.distributed import cuda_index, data_workers, describe_process, init_distributed, usable_cpus
from deeplab.errors import DeeplabError


@pytest.mark.parametrize(("local_rank", "visible", "index"), [(0, 2, 0), (1, 2, 1), (0, 1, 0), (1, 1, 0), (3, 8, 3)])
def test_a_ranks_gpu_under_either_binding(local_rank: int, visible: int, index: int) -> None:
    assert cuda_index(local_rank, visible) == index


def test_a_task_that_sees_too_few_gpus_is_named() -> None:
    with pytest.raises(DeeplabError, match=r"LOCAL_RANK=2 but this task sees 2 GPUs"):
        cuda_index(2, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_cuda_without_a_gpu_is_one_line_not_a_cpu_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_GPUS", "0,1")
    with pytest.raises(DeeplabError) as err:
        init_distributed("cuda")
    line = str(err.value)
    assert "\n" not in line and line.startswith("train.device is cuda but torch sees no usable CUDA device")
    assert "SLURM_JOB_GPUS='0,1'" in line
    assert init_distributed("auto").device.type == "cpu"  # auto may fall back; only an explicit cuda refuses


def test_data_workers_fit_the_cpus_of_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert usable_cpus() == cpus and data_workers(cpus + 5) == cpus and data_workers(0) == 0
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")  # a site without CPU binding: the allocation still counts
    assert data_workers(8) == 1


def test_each_rank_says_where_it_runs() -> None:
    line = describe_process(init_distributed("cpu"), 3)
    assert re.fullmatch(
        r"rank 0/1 \(local 0\) on \S+ pid \d+: \d+ CPUs [\d,-]+, \d+ GPUs visible \(CUDA_VISIBLE_DEVICES=\S+\), "
        r"device cpu, backend -, rendezvous -, 3 data workers",
        line,
    ), line
