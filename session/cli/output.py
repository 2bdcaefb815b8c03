"""Output for people and for scripts.

Every command prints readable lines for people (colour only when stdout is a
terminal and NO_COLOR is unset) or, with ``--json``, exactly one JSON document on
stdout. Errors always go to stderr as one line.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO


class Output:
    def __init__(self, json_mode: bool = False, stream: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stdout
        self.colour = (
            not json_mode and self.stream.isatty() and "NO_COLOR" not in os.environ
        )

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def ok(self, text: str) -> str:
        return self._c("32", text)

    def bad(self, text: str) -> str:
        return self._c("31", text)

    def dim(self, text: str) -> str:
        return self._c("2", text)

    def bold(self, text: str) -> str:
        return self._c("1", text)

    def line(self, text: str = "") -> None:
        """A line for people; suppressed in --json mode."""
        if not self.json_mode:
            print(text, file=self.stream, flush=True)

    def progress(self, text: str) -> None:
        """Progress while waiting: stderr, so it never mixes with --json on stdout."""
        print(self.dim(text) if self.colour else text, file=sys.stderr, flush=True)

    def result(self, data: Any, human: str | None = None) -> None:
        """The command's result: JSON in --json mode, else ``human`` if given."""
        if self.json_mode:
            print(json.dumps(data, indent=2, sort_keys=True), file=self.stream, flush=True)
        elif human is not None:
            print(human, file=self.stream, flush=True)
