"""Find a model's local folder: a path, or a hub id already in the Hugging Face cache (never downloaded)."""

from __future__ import annotations

from pathlib import Path

from cmaam.core.errors import CMAAMError


def local_model_path(reference: str | Path, label: str = "model") -> Path:
    """A local folder for ``reference``: the folder itself, or the cached snapshot of a hub id like 'org/name'."""
    text = str(reference)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CMAAMError(f"{label} {text}: not a folder")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, local_files_only=True))
        except Exception:
            raise CMAAMError(f"{label} {text}: not a local folder and not in the Hugging Face cache "
                             f"(download it first: huggingface-cli download {text})") from None
    raise CMAAMError(f"{label} {text}: no such model folder")
