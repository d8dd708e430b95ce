"""What a string from a client may hold: the rules every API field and command-line option applies.

Postgres stores no NUL, UTF-8 has no lone surrogates, and a control character in a name, an
address or a filter is never meant. So:

- every string of a request (JSON body, form field, query parameter), keys included, is free of
  NUL, the other C0 and C1 control characters and lone surrogates; tab, line feed and carriage
  return are allowed in free text (a template's body, a context value);
- a single-line field (a name, an address, a subject, a filter) allows none of them, nor a line
  or paragraph separator.

Each refusal names the field and the character. No framework here: the command-line tools use
these rules before Django is set up.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import uuid
from collections.abc import Iterator
from typing import Any

MAX_ID = 2**63 - 1  # a bigint: the largest id a row can have

# Never in any string: C0 controls but tab, LF and CR; DEL; C1 controls; lone surrogates.
FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# Not in a single-line value either: tab, LF, CR and the Unicode line and paragraph separators.
FORBIDDEN_IN_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def parse_id(value) -> int | None:
    """A row id from a client: an int, or a string of ASCII digits, from 1 to MAX_ID; else None.
    (URL paths match `<id:…>` of core.converters, which keeps to 18 digits.)"""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID:
        return value
    return None


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def uuid_text(value) -> str | None:
    """`value` as Postgres writes a UUID (lower case, with hyphens), or None when it is not one.
    The form our own ids take is recognised at C speed; uuid.UUID reads any other."""
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        return None


def describe(character: str) -> str:
    code = ord(character)
    if 0xD800 <= code <= 0xDFFF:
        kind = "a lone surrogate"
    elif character in "\t\n\r\u2028\u2029":
        kind = "a line break or tab"
    else:
        kind = "a control character"
    return f"It contains {kind} (U+{code:04X}), which is not allowed here."


def text_problem(value: str, *, single_line: bool = False) -> str | None:
    """Why `value` may not be stored, or None."""
    found = (FORBIDDEN_IN_LINE if single_line else FORBIDDEN).search(value)
    return describe(found.group()) if found else None


class OutOfRange:
    """A JSON number no column or JSON document here can hold: more digits than any id, or a
    float beyond the double range. The parser keeps its place so the refusal names the field."""

    MAX_DIGITS = 40

    def __init__(self, text: str):
        self.text = text

    @classmethod
    def parse_int(cls, text: str):
        return int(text) if len(text) <= cls.MAX_DIGITS else cls(text)

    @classmethod
    def parse_float(cls, text: str):
        value = float(text)
        return value if math.isfinite(value) else cls(text)


def printable_key(key: str) -> str:
    """`key` as it can be shown in a field path: forbidden characters written as escapes."""
    return FORBIDDEN_IN_LINE.sub(lambda m: f"\\u{ord(m.group()):04x}", key)


# A forbidden character in JSON text: C1 controls and DEL may stand raw, the rest only escaped,
# as \uXXXX or, for backspace and form feed, as JSON's short escapes \b and \f.
_RAW_C1 = re.compile(r"[\x80-\x9f]")
_ESCAPED = re.compile(r"\\(?:[bf]|u(?:00[01189][0-9a-fA-F]|007[fF]|[dD][89a-fA-F][0-9a-fA-F]{2}))")


def suspect_json(text: str) -> bool:
    """Whether JSON `text` may hold a forbidden character; the common answer, no, at C speed."""
    if "\x7f" in text or (not text.isascii() and _RAW_C1.search(text)):
        return True
    return "\\" in text and _ESCAPED.search(text) is not None


_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})


def first_problem(
    data, *, max_depth: int, text: str | None = None, suspect: bool | None = None
) -> tuple[str, str] | None:
    """The first (field path, reason) in a parsed JSON document: a container nested deeper than
    `max_depth`, a string (or a key) holding a forbidden character, a number OutOfRange, or a value
    that is not JSON at all (a file from a form, say); None when clean. Paths look like
    `context.items.2.name`. With the `text` it was parsed from, strings are searched one by one
    only when the text holds a forbidden character, raw or escaped; paths are built only for a
    problem. Both keep a large clean body cheap. `suspect` is that answer, when the caller has it
    already: the parts of one body checked one by one (`suspect_json` of the body, once)."""
    strings = suspect if suspect is not None else (text is None or suspect_json(text))
    if problem := _value_problem(data, strings):
        return "body", problem
    if not isinstance(data, (dict, list)):
        return None
    # Per open container: its (key, value) iterator, its key.
    frames: list[tuple[Iterator[tuple[Any, Any]], Any]] = [(_items(data), None)]
    while frames:
        entry = next(frames[-1][0], None)  # items are (key, value) pairs, never None
        if entry is None:
            frames.pop()
            continue
        key, value = entry
        if strings and isinstance(key, str) and (found := FORBIDDEN.search(key)):
            return _path(frames, key), f"Its name: {describe(found.group())}"
        if isinstance(value, (dict, list)):
            if len(frames) >= max_depth:
                return _path(frames, key), f"It is nested deeper than {max_depth} levels."
            scalars = value.values() if isinstance(value, dict) else value
            if strings or not _PLAIN_SCALARS.issuperset(map(type, scalars)):
                frames.append((_items(value), key))  # else: clean scalars only, seen at C speed
        elif problem := _value_problem(value, strings):
            return _path(frames, key), problem
    return None


def _items(container: dict | list) -> Iterator[tuple[Any, Any]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


def _path(frames, key) -> str:
    return ".".join(printable_key(str(k)) for k in [*(k for _, k in frames[1:]), key])


def _value_problem(value, strings: bool) -> str | None:
    if isinstance(value, str):
        found = FORBIDDEN.search(value) if strings else None
        return describe(found.group()) if found else None
    if isinstance(value, OutOfRange):
        return f"The number {value.text[:20]}… is out of range."
    if value is None or isinstance(value, (bool, int, float, dict, list)):
        return None
    return f"It is not a JSON value ({type(value).__name__})."


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def array_items(text: str) -> list[str] | None:
    """The texts of the items of the JSON array `text`, split at its top-level commas without
    parsing the items (so an item too deep to parse costs only itself); None if `text` is not an
    array."""
    stripped = text.strip()
    if not stripped.startswith("[") or not stripped.endswith("]"):
        return None
    items, depth, start = [], 0, 1
    for token in _JSON_TOKEN.finditer(stripped):
        value = token.group()
        if value in "[{":
            depth += 1
        elif value in "]}":
            depth -= 1
            if depth == 0:
                items.append(stripped[start : token.start()])
        elif value == "," and depth == 1:
            items.append(stripped[start : token.start()])
            start = token.end()
    return [item for item in items if item.strip()] if depth == 0 else None


def deep_path(text: str, *, max_depth: int) -> str:
    """The field path of the first value in JSON `text` nested deeper than `max_depth`, found by
    scanning the text: for documents too deep for the parser itself to report it."""
    frames: list[list] = []  # per open container: [kind, the key or index being read in it]
    for token in _JSON_TOKEN.finditer(text):
        value = token.group()
        if value in "[{":
            if len(frames) == max_depth:
                break
            frames.append([value, 0 if value == "[" else None])
        elif value in "]}":
            if frames:
                frames.pop()
        elif value == ",":
            if frames and frames[-1][0] == "[":
                frames[-1][1] += 1
        elif value != ":" and frames and frames[-1][0] == "{":
            with contextlib.suppress(ValueError):  # not a key: nothing to name
                frames[-1][1] = json.loads(value)  # a key (a string value is overwritten by the next key)
    return ".".join(printable_key(str(cursor)) for _, cursor in frames if cursor is not None) or "body"
