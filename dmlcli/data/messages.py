"""Echoing file content in error messages: whatever a data file holds, a message stays one short line.

Every piece of file content that goes into a DataError (a token, a column name, an array's dtype or
shape, a list of names) passes through `shown` or `shown_list`, which bound its length and escape
control characters, so a hostile file can neither flood the terminal nor send it escape sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

# Characters of one echoed token or name; longer ones are cut with "...".
SHOWN_CHARACTERS = 40
# Items of a list echoed in full; a longer list shows its first few, "..." and its last.
SHOWN_ITEMS = 5


def shown(content: bytes | str, limit: int = SHOWN_CHARACTERS) -> str:
    """`content` as printable text of at most `limit` characters.

    Bytes are decoded as UTF-8 with undecodable bytes replaced; characters that are not printable
    (control characters, line breaks) appear as backslash escapes.
    """
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    text = text[: limit + 1]  # enough to know whether to cut, without escaping a huge token
    text = "".join(character if character.isprintable() else character.encode("unicode_escape").decode("ascii")
                   for character in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_list(items: Sequence[bytes | str], noun: str) -> str:
    """Items joined by ", ", each through `shown`: all of them when few, else the count and a sample.

    For example "f1, f2, f3", or "5001 columns: f0, f1, f2, ..., f5000" with noun "columns".
    """
    if len(items) <= SHOWN_ITEMS:
        return ", ".join(shown(item) for item in items)
    sample = [shown(item) for item in items[: SHOWN_ITEMS - 2]] + ["...", shown(items[-1])]
    return f"{len(items)} {noun}: " + ", ".join(sample)
