"""Vocabulary alignment: embedding and lm_head rows of two models matched by token string through both tokenizers.

Row i of an embedding belongs to the token with id i. When two models differ in vocabulary size or tokenizer,
the target's row for a token takes the source's row for the same token string; the target's other rows (its own
tokens, padding rows) are kept. Token strings are compared as the tokenizers store them (byte-level BPE 'Ġword'
and SentencePiece '▁word' are different strings, so such pairs barely match: the counts say so).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cmaam.core.errors import CMAAMError, load_errors
from cmaam.io.views import RowAlignment

logger = logging.getLogger(__name__)


def load_vocabulary(folder: str | Path) -> dict[str, int] | None:
    """token string -> id of a model folder's tokenizer (tokenizer.json, else transformers), None without one."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        with load_errors(folder / "tokenizer.json", "tokenizer"):
            return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True)
    if not any((folder / name).is_file() for name in ("tokenizer_config.json", "vocab.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    with load_errors(folder, "tokenizer"):
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False).get_vocab()


@dataclass
class VocabularyAlignment:
    """How the rows of one vocabulary tensor pair up: counts for the report, the alignment for the merge
    (None: same tokenizer and size, a plain row-wise merge)."""

    target_rows: int
    source_rows: int
    matched: int
    kept: int  # target rows without a source row (kept from the target)
    source_unused: int  # source rows with no target row
    same_tokenizer: bool
    alignment: RowAlignment | None

    def summary(self) -> dict:
        return {"target_rows": self.target_rows, "source_rows": self.source_rows, "matched": self.matched,
                "kept_from_target": self.kept, "source_rows_unused": self.source_unused,
                "same_tokenizer": self.same_tokenizer}


def align_rows(target_vocab: dict[str, int] | None, source_vocab: dict[str, int] | None,
               target_rows: int, source_rows: int, where: str) -> VocabularyAlignment:
    """Match target rows to source rows by token string (ids beyond a tensor's rows are ignored).

    Same tokenizer (equal token -> id tables, or none on either side) and the same number of rows: the
    identity. Different sizes without both tokenizers: a CMAAMError naming ``where``.
    """
    same = target_vocab is not None and target_vocab == source_vocab
    if target_rows == source_rows and (same or target_vocab is None or source_vocab is None):
        if not same:
            logger.warning("%s: no tokenizer on one side; rows are merged by position", where)
        return VocabularyAlignment(target_rows, source_rows, target_rows, 0, 0, same, None)
    if target_vocab is None or source_vocab is None:
        raise CMAAMError(f"{where}: vocabulary sizes differ ({target_rows} target rows, {source_rows} source rows) "
                         "and a tokenizer is missing, so rows cannot be matched by token")
    pairs = sorted((target_id, source_vocab[token]) for token, target_id in target_vocab.items()
                   if token in source_vocab and target_id < target_rows and source_vocab[token] < source_rows)
    target_ids = torch.tensor([t for t, _ in pairs], dtype=torch.int64)
    source_ids = torch.tensor([s for _, s in pairs], dtype=torch.int64)
    if target_ids.numel() != target_ids.unique().numel() or source_ids.numel() != source_ids.unique().numel():
        raise CMAAMError(f"{where}: a token id appears twice in a tokenizer; cannot match rows")
    return VocabularyAlignment(target_rows, source_rows, len(pairs), target_rows - len(pairs),
                               source_rows - len(pairs), same,
                               RowAlignment(target_ids, source_ids, target_rows))
