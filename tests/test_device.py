"""gjp.device: one device choice and one autocast for embed, embed-tags (and later pretrain)."""

import os
import subprocess
import sys

import pytest
import torch

from gjp.device import autocast, resolve_device
from gjp.errors import GjpError

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@cpu_only
def test_auto_is_cpu_without_cuda():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@cpu_only
@pytest.mark.parametrize("choice", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line(choice):
    with pytest.raises(GjpError) as err:
        resolve_device(choice)
    message = str(err.value)
    assert "\n" not in message and f"--device {choice}" in message and "cpu" in message


def test_unknown_choice_is_one_line():
    with pytest.raises(GjpError, match="choose one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_autocast_on_cpu_is_a_no_op():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    expected = layer(x)
    for device in ("cpu", torch.device("cpu")):
        with autocast(device):
            assert not torch.is_autocast_enabled("cpu")
            y = layer(x)
        assert y.dtype == torch.float32
        assert torch.equal(y, expected)


@cpu_only
def test_cli_cuda_without_a_gpu_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "gjp", "embed", "--model", "tagcount", "-i",
                             str(tmp_path / "none.h5"), "--device", "cuda"],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gjp: error: --device cuda: no usable CUDA GPU"), result.stderr
