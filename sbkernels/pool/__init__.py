"""The selection pool: selected rows gathered on the device into full backward batches (SPEC section 6).

:class:`SelectionPool` is the public face; its storage (:mod:`._buffers`), the device-side row count read
back without a sync (:mod:`._row_count`) and the batch description (:mod:`._batch_spec`) are internal.
"""

from ._batch_spec import BackwardBatch
from ._pool import SelectionPool

__all__ = ["BackwardBatch", "SelectionPool"]
