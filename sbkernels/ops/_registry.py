"""How sbkernels registers its ops with ``torch.library``, and where their Python bodies are found.

Only :mod:`sbkernels.ops` uses this module: it names each op once. Every selection op is a
``torch.library.triton_op``: eager calls run its Python body (which runs the backend's kernel from
:data:`sbkernels.ops.backends.KERNELS`), ``torch.compile`` traces into it, and the same body on fake
tensors is the fake implementation. :func:`call` runs an op (the body directly in eager mode, see there);
:func:`python_implementation` hands the body back by op name: dispatch modes (the tests' CUDA-sync
detector) see a custom op as a single call and use it to look inside.

Importing this module loads the compiled extension ``sbkernels._C``, which registers the C++ ops
(``sbkernels::gather_rows``): ``import sbkernels`` alone makes every op available.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from types import ModuleType

import torch

from .. import _checks as checks
from ..slots import _C  # importing slots loads the compiled extension (or fails with the build command)

NAMESPACE = "sbkernels"
_implementations: dict[str, Callable] = {}
_read_tensors: dict[str, tuple[int, ...]] = {}  # per op: positions of the tensor inputs it does not mutate
#: Checks of arguments several ops share, by name. :func:`call` runs them on every eager call (a direct
#: ``torch.ops`` call meets the dispatcher's own type check), so no public function can forget one.
SHARED_CHECKS: dict[str, Callable[[object], None]] = {"ignore_index": checks.check_ignore_index}
_shared_checks: dict[str, tuple[tuple[int, Callable[[object], None]], ...]] = {}  # per op: (position, check)


def register_op(
    name: str, mutates_args: Iterable[str] = (), *, check: Callable[..., None]
) -> Callable[[Callable], Callable]:
    """Register the decorated function as the op ``sbkernels::<name>`` (a ``triton_op``).

    ``check`` takes the op's arguments and raises on any it cannot run on (SPEC section 11). The registered
    op runs it before the body, so a direct ``torch.ops.sbkernels.<name>(...)`` call is checked; :func:`call`
    runs the body alone, after the public function has checked its own arguments.
    """
    mutated = set(mutates_args)

    def register(implementation: Callable) -> Callable:
        _implementations[name] = implementation
        parameters = inspect.signature(implementation).parameters.values()
        _read_tensors[name] = tuple(
            i for i, p in enumerate(parameters) if "Tensor" in str(p.annotation) and p.name not in mutated
        )
        _shared_checks[name] = tuple(
            (i, SHARED_CHECKS[p.name]) for i, p in enumerate(parameters) if p.name in SHARED_CHECKS
        )

        @functools.wraps(implementation)
        def checked(*args, **kwargs):
            check(*args, **kwargs)
            return implementation(*args, **kwargs)

        # The schema is inferred from the signature; resolved here, where the body's module names its types.
        checked.__signature__ = inspect.signature(implementation, eval_str=True)  # type: ignore[attr-defined]
        return torch.library.triton_op(f"{NAMESPACE}::{name}", mutates_args=mutated)(checked)

    return register


def extension() -> ModuleType:
    """The compiled extension module (it also carries the slot numbers of ``csrc/slots.h``)."""
    return _C


def call(name: str, *args):
    """Run the op ``sbkernels::<name>``: through the dispatcher while torch.compile traces, else its body.

    The body is the op's implementation either way. Eager calls skip the dispatcher's Python custom-op layer:
    for ops that mutate an input its ADInplaceOrView step rebuilds the schema's argument list per argument
    (torch 2.13), which costs more than the whole native CPU selection.
    """
    if torch.compiler.is_compiling():
        return getattr(torch.ops.sbkernels, name)(*args)
    implementation = _implementations[name]
    for position, check in _shared_checks[name]:
        check(args[position])
    # As through the dispatcher, no output takes part in autograd (the selection ops have no formula). The
    # context manager costs a few us, so it is entered only when an input (logits, losses, features)
    # requires grad; the state the op mutates never does.
    if torch.is_grad_enabled() and _requires_grad(args, _read_tensors[name]):
        with torch.no_grad():
            return implementation(*args)
    return implementation(*args)


def _requires_grad(args: tuple, positions: tuple[int, ...]) -> bool:
    for i in positions:
        if args[i] is not None and args[i].requires_grad:
            return True
    return False


def python_implementation(name: str) -> Callable | None:
    """The Python body of the op ``sbkernels::<name>``; None for the compiled (C++) ops."""
    return _implementations.get(name)
