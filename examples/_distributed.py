"""What the multi-process examples (and the tests and benchmarks that launch them) share."""

from __future__ import annotations

import socket

import torch


def free_port() -> int:
    """A TCP port free now on loopback, for ``torchrun --master_port`` (``0`` leaves the ranks waiting forever)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def whole_parameter(parameter: torch.Tensor) -> torch.Tensor:
    """The whole parameter (an FSDP2 shard is gathered: a collective, called on every rank in one order)."""
    full = parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter
    return full.detach().clone()
