"""A CUDA-sync detector that runs on the CPU: what ``torch.cuda.set_sync_debug_mode("error")`` would flag.

This project's machines have no GPU, so the hot path runs here on CPU tensors that stand for device
tensors, inside :class:`SyncDetector`, a ``TorchDispatchMode``. Each op class that makes the host wait for
a GPU is recorded as a :class:`Violation`:

- ``host read``: a device value read by the host: ``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``
  (``aten._local_scalar_dense``), ``.tolist()``, ``.numpy()``, ``.cpu()``, and ops whose output shape
  depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``, ``equal``, ...);
- ``host data to device``: a tensor made from host data (``torch.tensor``/``as_tensor`` of Python values,
  list indices, ``aten.lift_fresh``): a pageable host-to-device copy;
- ``scalar write``: ``t[i] = python_scalar`` into a device tensor (``lift_fresh`` then ``copy_``);
- ``blocking copy``: a copy between a device tensor and host memory that is not ``non_blocking``;
- ``wait``: ``torch.cuda.synchronize()``, ``Event.synchronize()``, ``Stream.synchronize()``, or a test
  double's wait reported through :func:`note_wait`.

Host tensors are the ones the code under test marks as such through :func:`mark_host` (a readback
double's "pinned" buffer), and, on a CUDA run, every CPU tensor. Reading them is free.

Dispatch modes see a registered custom op as one call and not its inside, so for every op registered by
``sbkernels.ops._registry`` the detector runs the op's own Python implementation under the mode as well. A
Triton launch (under the interpreter, a Python loop over numpy copies) is opaque: a kernel never syncs.
The compiled ``sbkernels::gather_rows`` is opaque too; its CUDA source is checked by tests/tools/cuda_emulation.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sbkernels import ops as library

aten = torch.ops.aten

# Ops whose output size (or Python result) depends on tensor values: the host must read the device.
_DATA_DEPENDENT = {
    aten._local_scalar_dense.default: "host read (.item(), int(), float(), bool())",
    aten.item.default: "host read (.item(), int(), float(), bool())",
    aten.nonzero.default: "host read (nonzero: data-dependent size)",
    aten.masked_select.default: "host read (masked_select: data-dependent size)",
    aten.equal.default: "host read (torch.equal returns a Python bool)",
    aten.is_nonzero.default: "host read (bool of a tensor)",
    aten.bincount.default: "host read (bincount: size from the maximum)",
    aten._unique2.default: "host read (unique: data-dependent size)",
    aten.unique_dim.default: "host read (unique: data-dependent size)",
    aten.unique_consecutive.default: "host read (unique_consecutive: data-dependent size)",
    aten.repeat_interleave.Tensor: "host read (repeat_interleave without output_size)",
}
_LIFTS = {aten.lift_fresh.default, aten.lift_fresh_copy.default}
_COPIES = {aten.copy_.default, aten._to_copy.default}
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}

_state = threading.local()


class _TensorSet:
    """Tensors by identity, held weakly (a WeakSet would compare tensors with ==)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: torch.Tensor) -> None:
        key = id(t)
        self._refs[key] = weakref.ref(t, lambda _, key=key: self._refs.pop(key, None))

    def __contains__(self, t: object) -> bool:
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t


class _StorageSet:
    """Tensors and every view of them, by the storage they share, held weakly."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: torch.Tensor) -> None:
        key = t.untyped_storage().data_ptr()
        self._refs[key] = weakref.ref(t, lambda _, key=key: self._refs.pop(key, None))

    def __contains__(self, t: torch.Tensor) -> bool:
        return t.untyped_storage().data_ptr() in self._refs


_host_tensors = _StorageSet()


@dataclass
class Violation:
    kind: str
    detail: str
    where: str  # the innermost frame outside torch and this module

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail} at {self.where}"


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith("sync_detector.py"):
            return f"{frame.filename.split('/')[-2]}/{frame.filename.split('/')[-1]}:{frame.lineno} {frame.line}"
    return "?"


def mark_host(t: torch.Tensor) -> torch.Tensor:
    """Declare ``t`` host memory (a pinned readback buffer): reading it never syncs."""
    _host_tensors.add(t)
    return t


def note_wait(what: str) -> None:
    """Called by test doubles of events and streams when the code under test waits on them."""
    detector = getattr(_state, "active", None)
    if detector is not None:
        detector.record("wait", what)


class SyncDetector(TorchDispatchMode):
    """Records every op that would synchronize a CUDA device; see the module docstring.

    Args:
        device: the device the hot path runs on; on "cuda", every CPU tensor is host memory.
        allowed_waits: waits the API documents (e.g. the pool's counted waits), not reported.
    """

    def __init__(self, device: str | torch.device = "cpu", allowed_waits: int = 0) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.allowed_waits = allowed_waits
        self.violations: list[Violation] = []
        self.waits = 0
        self.custom_ops: list[str] = []
        self.ops_seen = 0  # every op the mode checked: a run that saw none checked nothing
        self._lifted = _TensorSet()
        self._opaque = 0
        self._depth = 0
        self._patches = contextlib.ExitStack()

    # ------------------------------------------------------------------------------------------ records
    def record(self, kind: str, detail: str) -> None:
        if self._opaque:
            return
        if kind == "wait":
            self.waits += 1
            if self.waits <= self.allowed_waits:
                return
        self.violations.append(Violation(kind, detail, _caller()))

    def kinds(self) -> set[str]:
        return {v.kind for v in self.violations}

    def assert_clean(self) -> None:
        assert not self.violations, "would synchronize a GPU:\n" + "\n".join(f"  {v}" for v in self.violations)

    # ------------------------------------------------------------------------------------- host memory
    def _is_host(self, t: torch.Tensor) -> bool:
        return t in _host_tensors or (self.device.type == "cuda" and t.device.type == "cpu")

    # ---------------------------------------------------------------------------------------- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._opaque:
            return func(*args, **kwargs)
        self.ops_seen += 1
        if func.namespace == "sbkernels":
            return self._custom_op(func, args, kwargs)
        self._check(func, args, kwargs)
        out = func(*args, **kwargs)
        if func in _LIFTS:
            self._lifted.add(out)
        return out

    def _custom_op(self, func, args, kwargs):
        name = func.name().split("::")[-1].split(".")[0]
        self.custom_ops.append(name)
        implementation = library.python_implementation(name)
        if implementation is None:  # a compiled op: its CUDA source is checked by the emulation tests
            return func(*args, **kwargs)
        with self:  # the op's own Python, seen op by op
            return implementation(*args, **kwargs)

    def _check(self, func, args, kwargs) -> None:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if func in _DATA_DEPENDENT:
            if not all(self._is_host(t) for t in tensors):
                self.record("host read", _DATA_DEPENDENT[func])
        elif func in _LIFTS:
            self.record("host data to device", f"{func} of a {tuple(args[0].shape)} host tensor")
        elif func in _INDEXING:
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or []):
                self.record("host read", f"{func} with a boolean mask (nonzero inside)")
        elif func in _COPIES:
            self._check_copy(func, args, kwargs)

    def _check_copy(self, func, args, kwargs) -> None:
        if func is aten.copy_.default:
            dst, src = args[0], args[1]
            non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
            if src in self._lifted:
                self.record("scalar write", f"t[...] = host value into a {tuple(dst.shape)} device tensor")
                return
            if self._is_host(dst) != self._is_host(src) and not non_blocking:
                self.record("blocking copy", f"copy_ between host and device of {tuple(src.shape)}")
        else:  # _to_copy: .to(device) of a tensor
            src, target = args[0], kwargs.get("device")
            if target is not None and torch.device(target).type != src.device.type and not kwargs.get("non_blocking"):
                self.record("blocking copy", f".to({target}) of {tuple(src.shape)}")

    # ------------------------------------------------------------------------ Python-level entry points
    def __enter__(self):
        # Entered again from inside __torch_dispatch__ to run a custom op's Python: patch only once.
        if self._depth == 0:
            _state.active = self
            self._patch_python_reads()
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self._depth -= 1
        if self._depth == 0:
            _state.active = None
            self._patches.close()
        return result

    def _patch_python_reads(self) -> None:
        """``.cpu()``, ``.numpy()``, ``.tolist()`` of a CPU tensor never dispatch: wrap them; wrap the waits."""
        detector = self

        def reads(name: str, kind: str):
            original = getattr(torch.Tensor, name)

            def wrapper(t, *a, **k):
                if not detector._is_host(t):
                    detector.record(kind, f"Tensor.{name}() of a {tuple(t.shape)} device tensor")
                with detector._opaque_region():
                    return original(t, *a, **k)

            self._patches.enter_context(_patched(torch.Tensor, name, wrapper))

        for name in ("cpu", "numpy", "tolist"):
            reads(name, "host read")

        def waits(owner, name: str):
            original = getattr(owner, name)

            def wrapper(*a, **k):
                detector.record("wait", f"{getattr(owner, '__name__', owner)}.{name}()")
                return original(*a, **k)

            self._patches.enter_context(_patched(owner, name, wrapper))

        waits(torch.cuda, "synchronize")
        waits(torch.cuda.Event, "synchronize")
        waits(torch.cuda.Stream, "synchronize")

        # Triton launches: a kernel never syncs; the interpreter's own tensor traffic is not the hot path's.
        from triton.runtime.interpreter import InterpretedFunction

        original_run = InterpretedFunction.run

        def run(fn_self, *a, **k):
            with detector._opaque_region():
                return original_run(fn_self, *a, **k)

        self._patches.enter_context(_patched(InterpretedFunction, "run", run))

    @contextlib.contextmanager
    def _opaque_region(self):
        self._opaque += 1
        try:
            yield
        finally:
            self._opaque -= 1


@contextlib.contextmanager
def _patched(owner, name, value):
    original = owner.__dict__.get(name, getattr(owner, name))
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
