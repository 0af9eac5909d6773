"""Script-based language checks: does a completion use the script of the language it should be in?"""

from __future__ import annotations

import unicodedata

from cmaam.core.errors import CMAAMError

LANGUAGES = ("ko", "ja", "zh", "en")
LANGUAGE_NAMES = {"ko": "Korean", "ja": "Japanese", "zh": "Chinese", "en": "English"}


def check_language_code(lang: str) -> str:
    """Return ``lang`` if it is a supported language code, else raise a one-line CMAAMError."""
    if lang not in LANGUAGES:
        raise CMAAMError(f"unknown language {lang!r} (choose {', '.join(LANGUAGES)})")
    return lang


def check_threshold(threshold: float) -> float:
    """Return a language-check threshold in [0, 1], else raise a one-line CMAAMError."""
    if not 0.0 <= threshold <= 1.0:
        raise CMAAMError(f"language check threshold must be in [0, 1], got {threshold}")
    return threshold


def script_of(character: str) -> str | None:
    """The script of one letter: 'hangul', 'kana', 'han', 'latin', 'other'; None for non-letters."""
    code = ord(character)
    if 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F:
        return "kana" if character not in "・゠" else None
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or character in "々〆":
        return "han"
    if not unicodedata.category(character).startswith("L"):
        return None
    if code < 0x250 or 0x1E00 <= code <= 0x1EFF or 0xFF21 <= code <= 0xFF5A:
        return "latin"
    return "other"


def script_counts(text: str) -> dict[str, int]:
    """Number of letters of each script in ``text`` (digits, punctuation and spaces are not counted)."""
    counts = {"hangul": 0, "kana": 0, "han": 0, "latin": 0, "other": 0}
    for character in text:
        script = script_of(character)
        if script is not None:
            counts[script] += 1
    return counts


def language_ratio(text: str, lang: str) -> float:
    """Fraction of the letters of ``text`` written in the script of ``lang`` (0.0 when there are none).

    ko: Hangul; ja: kana + Han; zh: Han; en: Latin.
    """
    check_language_code(lang)
    counts = script_counts(text)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    target = {"ko": counts["hangul"], "ja": counts["kana"] + counts["han"], "zh": counts["han"],
              "en": counts["latin"]}[lang]
    return target / total


def is_language(text: str, lang: str, threshold: float = 0.5) -> bool:
    """True when at least ``threshold`` of the letters are in ``lang``'s script.

    Japanese must also contain at least one kana, so that all-Han (Chinese) text does not pass as Japanese.
    """
    check_threshold(threshold)
    if lang == "ja" and script_counts(text)["kana"] == 0:
        return False
    return language_ratio(text, lang) >= threshold
