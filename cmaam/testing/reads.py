"""Counting the reads of tensor data in tests: which tensors a run reads, how often and by which rows."""

from __future__ import annotations

from typing import Any, Callable


def record_reads(monkeypatch: Any, entry: Callable[..., Any] = lambda *call: call) -> list:
    """Record every read from a CheckpointReader, in call order, as ``entry(folder name, tensor name, start,
    stop, rows)`` (default: that tuple).

    Counts ``get_rows`` (which ``get`` goes through) and ``view_rows`` (mapped views), once however they call
    each other. ``monkeypatch`` is pytest's fixture: the methods are restored after the test.
    """
    from cmaam.io import CheckpointReader

    calls: list = []
    depth = [0]

    def recording(original: Callable) -> Callable:
        def read(self, name, start=0, stop=None, *args, **kwargs):
            depth[0] += 1
            try:
                tensor = original(self, name, start, stop, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                shape = self.shape(name)
                rows = shape[0] if shape else 1
                calls.append(entry(self.path.name, name, start, start + (tensor.shape[0] if tensor.dim() else 1),
                                   rows))
            return tensor
        return read

    for method in ("get_rows", "view_rows"):
        monkeypatch.setattr(CheckpointReader, method, recording(getattr(CheckpointReader, method)))
    return calls
