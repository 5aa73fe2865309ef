"""Text from records, plugins and configs made safe to print: control characters become visible escapes.

Names, reasons, config values and exception messages reach the terminal, Markdown, CSV,
warning lines and error lines, and any of them may come from a file someone else wrote
or from a plugin. An ANSI or OSC escape sequence (`ESC [ ... m`, `ESC ] 8 ; ; url BEL`)
would restyle or rewrite the terminal, a carriage return overwrite the start of a line
or split a Markdown table row, and Unicode bidirectional controls reorder what a reader
sees. `visible` replaces each such character with a printable escape (`\\x1b`,
`\\r`, `\\u202e`), so nothing is hidden and nothing is lost. The record schema already
refuses control characters in names; every renderer still passes its text through here,
so each is safe on its own.
"""

from __future__ import annotations

import re

# C0 controls (newline and tab included), DEL, C1 controls, Unicode line/paragraph separators,
# and the bidirectional formatting characters (embeddings, overrides, isolates, marks).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def visible(text: object, *, keep: str = "") -> str:
    """`str(text)` with every control character (except those in `keep`, e.g. "\\n") shown as an escape."""
    s = str(text)
    if keep:
        return _CONTROL.sub(lambda m: m.group() if m.group() in keep else _escape(m), s)
    return _CONTROL.sub(_escape, s)


def has_control(text: str) -> bool:
    """Whether `text` holds any character `visible` would escape."""
    return _CONTROL.search(text) is not None
