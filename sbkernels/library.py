"""How sbkernels registers its ops with ``torch.library``, and where their Python implementations are found.

Every selection op is a ``torch.library.triton_op``: eager calls run its Python body (which launches a
Triton kernel or runs the reference), ``torch.compile`` traces into it, and the same body on fake tensors
is the fake implementation. :func:`python_implementation` hands the body back by op name: dispatch modes
(the tests' CUDA-sync detector) see a custom op as a single call and use it to look inside.

Importing this module loads the compiled extension ``sbkernels._C``, which registers the C++ ops
(``sbkernels::gather_rows``): ``import sbkernels`` alone makes every op available.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType

import torch

try:
    from . import _C  # loading the library runs its TORCH_LIBRARY registrations
except ImportError as error:  # pragma: no cover - exercised only on an unbuilt checkout
    raise ImportError(
        "sbkernels._C, the compiled extension, is not built: run `make build` (or `pip install -e . "
        "--no-build-isolation`) in the sbkernels checkout"
    ) from error

NAMESPACE = "sbkernels"
_implementations: dict[str, Callable] = {}


def register_op(name: str, mutates_args: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Register the decorated function as the op ``sbkernels::<name>`` (a ``triton_op``)."""

    def register(implementation: Callable) -> Callable:
        _implementations[name] = implementation
        return torch.library.triton_op(f"{NAMESPACE}::{name}", mutates_args=set(mutates_args))(implementation)

    return register


def extension() -> ModuleType:
    """The compiled extension module (it also carries the slot numbers of ``csrc/slots.h``)."""
    return _C


def python_implementation(name: str) -> Callable | None:
    """The Python body of the op ``sbkernels::<name>``; None for the compiled (C++) ops."""
    return _implementations.get(name)
