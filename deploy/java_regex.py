"""AWS service-model patterns (Java regular expressions) as Python ``re`` patterns.

The services validate a member against its ``pattern`` with Java's ``Matcher.matches()``, i.e.
the whole string must match, so callers use ``fullmatch``. Java syntax that Python's ``re``
lacks is translated here:

- ``\\p{L}``, ``\\p{IsN}``, ``\\p{Zs}`` ... (Unicode general categories): explicit code-point
  ranges built once from ``unicodedata``; ``\\p{Alnum}``, ``\\p{Print}`` ... (Java's POSIX classes,
  US-ASCII only unless a flag says otherwise): their ASCII ranges. ``\\P{..}`` outside a class
  becomes a negated class.
- ``\\uD800\\uDC00-\\uDBFF\\uDFFF`` (a UTF-16 surrogate pair on each end of a range, how Java
  spells "every supplementary character") becomes ``\\U00010000-\\U0010ffff``; other ``\\uXXXX``
  stay as they are (Python reads them the same way).
- ``\\z`` (end of input) becomes ``\\Z``; ``(?<name>`` becomes ``(?P<name>``.
- ``${1,128}`` (a quantifier of at least one on an anchor, which Java accepts and Python does not)
  is the anchor alone; ``[\\w-_]`` (a dash after a class shorthand, a literal in Java) is ``[\\w\\-_]``.

What has no faithful translation (class intersection ``&&``, nested classes, ``\\P{..}`` inside a
class, ``\\h``, ``\\R``, ``\\Q..\\E``, block and script names, a quantifier on an anchor that
Python refuses) raises ``Untranslatable``; callers skip that pattern and count it.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
import warnings

_POSIX = {  # Java's POSIX character classes (US-ASCII), as class bodies
    "Lower": "a-z",
    "Upper": "A-Z",
    "ASCII": r"\x00-\x7f",
    "Alpha": "a-zA-Z",
    "Digit": "0-9",
    "Alnum": "a-zA-Z0-9",
    "Punct": r"!-/:-@\[-`{-~",
    "Graph": r"!-~",
    "Print": r" -~",
    "Blank": r" \t",
    "Cntrl": r"\x00-\x1f\x7f",
    "XDigit": "0-9a-fA-F",
    "Space": r" \t\n\x0b\f\r",
}
_UNSUPPORTED_ESCAPES = set("hHvVRXGKkQEe")
_ANCHOR_REPEAT = re.compile(r"\{[1-9][0-9]*(,[0-9]*)?\}")


class Untranslatable(ValueError):
    """A Java pattern with no faithful Python ``re`` equivalent."""


@functools.cache
def _category_ranges() -> dict[str, list[tuple[int, int]]]:
    """Code-point ranges of every general category (``Lu``) and major class (``L``); ~0.2 s, once."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        for key in (category, category[0]):
            spans = ranges.setdefault(key, [])
            if spans and spans[-1][1] == code - 1:
                spans[-1] = (spans[-1][0], code)
            else:
                spans.append((code, code))
    return ranges


def _property_body(name: str) -> str:
    """The inside of a character class for ``\\p{name}``."""
    if name in _POSIX:
        return _POSIX[name]
    category = name.removeprefix("Is")
    spans = _category_ranges().get(category) if 1 <= len(category) <= 2 else None
    if not spans:
        raise Untranslatable(f"unknown property \\p{{{name}}}")
    return "".join(f"\\U{low:08x}" if low == high else f"\\U{low:08x}-\\U{high:08x}" for low, high in spans)


def _code_point(pattern: str, i: int) -> tuple[int, int]:
    """``\\uXXXX`` at ``i`` (and a following low surrogate, joined): (code point, characters read)."""
    high = int(pattern[i + 2 : i + 6], 16)
    if 0xD800 <= high <= 0xDBFF and pattern[i + 6 : i + 8] == "\\u":
        low = int(pattern[i + 8 : i + 12], 16)
        if 0xDC00 <= low <= 0xDFFF:
            return 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00), 12
    return high, 6


def _property(pattern: str, i: int) -> tuple[str, int]:
    """``\\p{Name}`` or ``\\pL`` at ``i``: (name, characters read)."""
    if pattern[i + 2 : i + 3] == "{":
        end = pattern.find("}", i)
        if end < 0:
            raise Untranslatable("unterminated \\p{")
        return pattern[i + 3 : end], end + 1 - i
    return pattern[i + 2 : i + 3], 3


def translate(pattern: str) -> str:
    """The Python ``re`` source for a Java pattern; raises ``Untranslatable``."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            escape = pattern[i + 1 : i + 2]
            if escape == "u":
                code, read = _code_point(pattern, i)
                out.append(f"\\U{code:08x}")
                i += read
                continue
            if escape in ("p", "P"):
                name, read = _property(pattern, i)
                body = _property_body(name)
                if in_class and escape == "P":
                    raise Untranslatable("negated property inside a class")
                out.append(body if in_class else ("[^" if escape == "P" else "[") + body + "]")
                i += read
                continue
            if escape in _UNSUPPORTED_ESCAPES or not escape:
                raise Untranslatable(f"escape \\{escape}")
            out.append("\\Z" if escape == "z" else char + escape)
            i += 2
            if in_class and escape in "dDwWsS" and pattern[i : i + 1] == "-" and pattern[i + 1 : i + 2] != "]":
                out.append("\\-")
                i += 1
            continue
        if in_class:
            if char == "[" or pattern.startswith("&&", i):
                raise Untranslatable("nested class or class intersection")
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            out.append("[^" if pattern.startswith("[^", i) else "[")
            i += 2 if pattern.startswith("[^", i) else 1
            if pattern[i : i + 1] == "]":  # a leading ] is a literal in Java
                out.append("\\]")
                i += 1
            continue
        elif char == "{" and out and out[-1] in ("$", "^") and (repeat := _ANCHOR_REPEAT.match(pattern, i)):
            i = repeat.end()  # repeating a zero-width anchor at least once is the anchor
            continue
        elif pattern.startswith("(?<", i) and pattern[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        out.append(char)
        i += 1
    if in_class:
        raise Untranslatable("unterminated class")
    return "".join(out)


@functools.cache
def compiled(pattern: str) -> re.Pattern[str]:
    """The translated pattern, compiled; ``Untranslatable`` when Python refuses or warns about it."""
    source = translate(pattern)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "possible nested set" and friends mean a different reading
        try:
            return re.compile(source)
        except (re.error, FutureWarning, DeprecationWarning) as exc:
            raise Untranslatable(f"python re: {exc}") from None
