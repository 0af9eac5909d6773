"""A model seen through another model's layout: the source's tensors under the target's names and shapes.

``MappedReader`` is what lets every merge (CMAAM, sweep, the mergekit runner) combine models of different
types without knowing it: it answers the reader calls (keys, shape, dtype, get) with the target's names, reads
the source's tensor behind each one, and for vocabulary tensors of another size or tokenizer places the
source's matched rows at the target's row positions. Rows the source has no counterpart for are the target's
own (``kept_rows`` lists them so a merge can keep them bit for bit). The mapping itself is built from the two
layouts in ``cmaam.alignment.mapping``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from cmaam.core.errors import CMAAMError
from cmaam.io.reader import CheckpointReader, TensorNames


@dataclass(frozen=True)
class RowAlignment:
    """Row ``target_rows[i]`` of the target takes row ``source_rows[i]`` of the source; other rows are kept."""

    target_rows: torch.Tensor  # int64
    source_rows: torch.Tensor  # int64
    target_count: int

    def kept_rows(self) -> torch.Tensor:
        """Target rows without a source row (int64, ascending)."""
        mask = torch.ones(self.target_count, dtype=torch.bool)
        mask[self.target_rows] = False
        return mask.nonzero().flatten()


class MappedReader(TensorNames):
    """Read-only reader protocol (as ``CheckpointReader``) over ``source``, under the names of ``target``.

    ``names`` maps target name -> source name; ``rows`` gives the row alignment of vocabulary tensors.
    ``path``, ``files`` and the weights are the source's; ``config`` and ``model_type`` are the target's
    (the view has the target's layout), the source's config stays in ``source_config``.
    """

    def __init__(self, source, target, names: Mapping[str, str], rows: Mapping[str, RowAlignment] | None = None):
        self.source = source
        self.target = target
        self.names = self._location = {name: names[name] for name in target.keys() if name in names}
        self.rows = dict(rows or {})
        missing = [name for name in self.names.values() if name not in source]
        if missing:
            raise CMAAMError(f"{source.path}: mapped tensor {missing[0]!r} not found")
        used = set(self.names.values())
        self.source_only = [name for name in source.keys() if name not in used]  # source tensors left out
        self.path: Path = source.path
        self.config = target.config
        self.source_config = source.config

    @property
    def files(self) -> list[Path]:
        return list(self.source.files)

    @property
    def reference_folder(self) -> Path:
        return self.source.reference_folder

    @property
    def model_type(self) -> str | None:
        return self.target.model_type

    def _source_name(self, name: str) -> str:
        try:
            return self.names[name]
        except KeyError:
            raise CMAAMError(f"{self.path}: no tensor mapped onto {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.target.shape(name) if name in self.rows else self.source.shape(self._source_name(name))

    def dtype(self, name: str) -> torch.dtype:
        return self.source.dtype(self._source_name(name))

    numel = CheckpointReader.numel  # element count from shape()
    __enter__ = CheckpointReader.__enter__
    __exit__ = CheckpointReader.__exit__

    def kept_rows(self, name: str) -> torch.Tensor | None:
        """Rows of ``name`` that are the target's own (no source row), None when every row is the source's."""
        alignment = self.rows.get(name)
        if alignment is None:
            return None
        kept = alignment.kept_rows()
        return kept if kept.numel() else None

    def get(self, name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """The source's tensor behind ``name``; for a vocabulary tensor, the target's rows with the matched rows
        replaced by the source's."""
        source_name = self._source_name(name)
        alignment = self.rows.get(name)
        if alignment is None:
            return self.source.get(source_name, device=device, dtype=dtype)
        out_dtype = dtype or self.source.dtype(source_name)
        tensor = self.target.get(name, device=device, dtype=out_dtype).clone()
        source = self.source.get(source_name, device=device, dtype=out_dtype)
        tensor[alignment.target_rows.to(tensor.device)] = source[alignment.source_rows.to(source.device)]
        return tensor

    def close(self) -> None:
        self.source.close()

    def __repr__(self) -> str:
        return f"MappedReader({str(self.path)!r} onto {str(self.target.path)!r}, tensors={len(self)})"
