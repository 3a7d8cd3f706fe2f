"""Where models run: the device choice and bf16 autocast, in one place.

``gjp embed`` (the image backbones), ``gjp embed-tags`` (sentence-transformers) and, later,
``gjp pretrain`` share these two functions, so ``--device auto|cpu|cuda`` means the same
everywhere and mixed precision is decided once. torch is imported inside the functions:
``gjp --help`` does not pay for it.
"""

from __future__ import annotations

import contextlib

from gjp.errors import GjpError

CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice="auto"):
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu``; ``cpu`` / ``cuda`` (or
    ``cuda:N``, or a ``torch.device``) as given, checked. Returns a ``torch.device``.

    On a CPU-only machine the only CUDA call is ``torch.cuda.is_available()``; asking for
    ``cuda`` there is a one-line :class:`GjpError`.
    """
    import torch

    if isinstance(choice, torch.device):
        choice = str(choice)
    name = str(choice).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise GjpError(f"--device {choice}: no usable CUDA GPU here "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                           "use --device cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GjpError(f"--device {choice}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise GjpError(f"--device {choice}: choose one of {', '.join(CHOICES)}")


def autocast(device):
    """A context manager for forward passes: bf16 autocast on CUDA, nothing on CPU.

    Callers cast outputs back to float32 (``.float()``) before writing them.
    """
    import torch

    device = resolve_device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict, device) -> dict:
    """A collated batch with every tensor (and the graph batch) moved to ``device``."""
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
