"""The catalogue of pathological JSON (tests/data/pathological_json.json), as cases.

A :class:`Case` is either a *value* (spliced as text into a member of a realistic
document, where a well-formed value would be) or a *document* rewrite (a BOM before it,
a NUL after it, another encoding...). Tests of every parser of untrusted input run the
whole catalogue; a new pathology is one more line of data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CATALOGUE = Path(__file__).resolve().parent.parent / "data" / "pathological_json.json"
#: a member value tests put in a document, then replace (as text) by the case's value
PLACEHOLDER = "@@pathological@@"


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "value" or "document"
    parser: str  # "accept" or "refuse"
    fragment: str
    spec: dict[str, Any]

    @property
    def fills(self) -> bool:
        return self.spec.get("build", {}).get("times") == "fill"

    def value_text(self, room: int = 4096) -> str:
        """The value as JSON text; a ``fill`` value is made as long as fits in ``room``."""
        if "text" in self.spec:
            return str(self.spec["text"])
        b = self.spec["build"]
        before, unit, after = b.get("before", ""), b["unit"], b.get("after", "")
        then = b.get("then", "") * int(b.get("then_times", 0))
        times = b["times"]
        if times == "fill":
            times = max(0, (room - len(before) - len(after)) // len(unit))
            if "#" in unit:  # distinct keys: the digits take room too
                width = len(str(times))
                times = max(0, (room - len(before) - len(after)) // (len(unit) - 1 + width))
                body = "".join(unit.replace("#", str(i)) for i in range(times))
                return before + body + after + then
        return before + unit * int(times) + after + then

    def splice(self, doc: Any, room: int | None = None) -> bytes:
        """``doc`` (holding :data:`PLACEHOLDER` once) as JSON bytes with this case applied.
        ``room``: the entry point's byte cap (``fill`` values fill what is left of it)."""
        text = json.dumps(doc)
        quoted = json.dumps(PLACEHOLDER)
        if self.kind == "value":
            assert text.count(quoted) == 1, "the document must hold the placeholder once"
            left = (room or 4096 + len(text)) - (len(text) - len(quoted)) - 16
            return text.replace(quoted, self.value_text(max(left, 0))).encode()
        return self.rewrite(text.replace(quoted, '"x"').encode())

    def rewrite(self, raw: bytes) -> bytes:
        """A whole document, rewritten (a ``document`` case)."""
        s = self.spec
        if "encoding" in s:
            return raw.decode().encode(s["encoding"])
        if "truncate" in s:
            return raw[: int(len(raw) * float(s["truncate"]))]
        if "raw_suffix_hex" in s:
            return raw + bytes.fromhex(s["raw_suffix_hex"])
        if "insert_after_brace" in s:
            return raw[:1] + s["insert_after_brace"].encode() + raw[1:]
        return s.get("prefix", "").encode() + raw + s.get("suffix", "").encode()


def _load() -> list[Case]:
    data = json.loads(CATALOGUE.read_text("utf-8"))
    out = []
    for kind, key in (("value", "values"), ("document", "documents")):
        for entry in data[key]:
            spec = {k: v for k, v in entry.items() if k not in ("id", "parser", "fragment")}
            out.append(Case(entry["id"], kind, entry["parser"], entry.get("fragment", ""), spec))
    return out


CASES = _load()
VALUES = [c for c in CASES if c.kind == "value"]


def params(cases: list[Case] | None = None) -> list[Any]:
    """The cases as pytest parameters with readable ids."""
    return [pytest.param(c, id=c.id) for c in (CASES if cases is None else cases)]
