"""The user's text files a build reads (split files, class and variant lists, attribute phrases, model configs): UTF-8,
a leading byte-order mark ignored, and any other encoding or malformed JSON refused in one line naming the file and
where it goes wrong."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")  # what Windows' "Unicode" (UTF-16) files start with


def read_text(path: Path, label: str, error: type[Exception] = ValueError) -> str:
    """`path`'s text decoded as UTF-8 (Windows editors' leading BOM is dropped, not read as part of the
    first line); another encoding (Latin-1, UTF-16) is an `error` naming `label`, the line and the byte."""
    data = path.read_bytes()
    mark = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[mark:].decode("utf-8")
    except UnicodeDecodeError as problem:  # its offsets count from after the mark (utf-8-sig's did too)
        start = mark + problem.start
        line = data.count(b"\n", 0, start) + 1
        source = "utf-16" if data.startswith(UTF16_MARKS) else "latin1"
        found = " (the file is UTF-16)" if source == "utf-16" else ""
        raise error(f"{label}: line {line}: byte 0x{data[start]:02x} at offset {start} is not UTF-8"
                    f"{found}; save the file as UTF-8 (e.g. `iconv -f {source} -t utf-8`)") from None


def read_json(path: Path, label: str, error: type[Exception] = ValueError) -> Any:
    """`path`'s JSON (UTF-8, as `read_text`); malformed JSON is an `error` naming `label`, the line and the column."""
    text = read_text(path, label, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as problem:
        raise error(f"{label}: invalid JSON at line {problem.lineno}, column {problem.colno}: {problem.msg}") from None
