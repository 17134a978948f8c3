"""Batches that back off on out-of-memory errors instead of crashing a long run.

A batch size that fits one model, prompt set or GPU does not fit the next. `BackOff.run` calls a
function on row slices of a batch; when a call runs out of memory it frees the cache, halves the
rows per call and retries, and keeps the smaller size for the batches after it. Only at one row
does it give up, with one sentence.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from alignparadox.errors import UserError

R = TypeVar("R")
log = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError saying so (MPS, CPU allocators, cuBLAS)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory() -> None:
    gc.collect()  # the failed call's tensors are garbage now; let the allocator reuse them
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


class BackOff:
    """Rows per call for one job (a generation, an activation collection), shrunk on OOM.

    `what` names the job in the one-sentence error when even a single row does not fit.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.limit: int | None = None  # rows per call after a back-off; None: as given

    def run(self, rows: int, call: Callable[[slice], R]) -> list[tuple[slice, R]]:
        """`call(rows_slice)` over rows 0..rows-1, in slices of at most `limit` rows; returns
        (slice, result) pairs in row order."""
        results: list[tuple[slice, R]] = []
        start = 0
        while start < rows:
            size = min(rows - start, self.limit or rows)
            part = slice(start, start + size)
            try:
                results.append((part, call(part)))
                start += size
                continue
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
            # Outside the except block: the failed call's frames and tensors are released.
            free_memory()
            if size == 1:
                raise UserError(f"{self.what} runs out of memory even one prompt at a time; "
                                "free memory, or use a smaller model, dtype or number of new "
                                "tokens.")
            self.limit = size // 2
            log.warning("%s ran out of memory with %d rows per batch; retrying with %d.",
                        self.what, size, self.limit)
        return results
