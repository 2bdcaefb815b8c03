"""Keep a run going when the reader of its standard output goes away (``| head``).

A joint computation must not fail for every party because one party's shell closed the
pipe its output went to. :class:`ReaderGoneStdout` stands in for ``sys.stdout`` during
``didmesh run``: writes pass through until the first ``BrokenPipeError``; from then on
file descriptor 1 points at ``/dev/null`` (so the interpreter's flush at exit does not
fail again) and the rest of the program's output, MPyC's log lines included, is
discarded. The run itself goes on and ends as it would have; :attr:`reader_gone` says
whether anything was dropped.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO


class ReaderGoneStdout:
    """A text stream wrapper that turns a broken pipe into silence (see module doc)."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self.reader_gone = False

    def _gone(self) -> None:
        if not self.reader_gone:
            self.reader_gone = True
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._inner.fileno())
                os.close(devnull)

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._inner.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._inner.flush()
            except BrokenPipeError:
                self._gone()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer, ...
        return getattr(self._inner, name)


@contextlib.contextmanager
def reader_gone_guard(stream: str = "stdout") -> Iterator[ReaderGoneStdout]:
    """``sys.stdout`` (or ``sys.stderr``: ``stream="stderr"``) is a
    :class:`ReaderGoneStdout` inside the block. Guard stderr too where both may go to one
    pipe (``didmesh run ... 2>&1 | head -1``): the mesh's progress lines (the connectivity
    table) must not fail the joint run either."""
    saved = getattr(sys, stream)
    guard = ReaderGoneStdout(saved)
    setattr(sys, stream, guard)  # a TextIO in all that matters
    try:
        yield guard
    finally:
        guard.flush()
        setattr(sys, stream, saved)
