"""JSON for frames: orjson, several times faster than the standard library on the frames a
voice session carries (an audio delta is mostly a 1,280-character base64 string), and the
standard library for what orjson refuses. Reading: text ``json`` accepts and orjson does not
(``NaN``, a lone surrogate escape) is read by ``json``, so every frame accepted before still
is. Writing: values orjson cannot write (an integer past 64 bits, a dict with keys that are
not strings) are written by ``json``. Two answers differ from the standard library's, for
values the Realtime API never carries: orjson reads an integer past 64 bits as a float, and
writes a float NaN or infinity as ``null`` (``json`` writes ``NaN``, which is not JSON).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]


def loads(text: str) -> Any:
    """Parse JSON text; raises ValueError if it is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps(value: Any) -> str:
    """Compact JSON text (no spaces, non-ASCII as it is)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
