"""Where the pre-start pump may run the mesh's loop (session/mesh/prestart.py, in-process):
only under the program's own frames (or the standard library's), down to the runner's
frame; never under asyncio's (nor MPyC's or didmesh's) code, nor outside the run. The
signals and real blocking calls are in tests/test_mesh_run_before_start.py and
tests/test_wireguard_abort.py."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from types import FrameType

import pytest
from didmesh.session.mesh.prestart import PreStartPump


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _pump(loop: asyncio.AbstractEventLoop, base: FrameType | None) -> PreStartPump:
    return PreStartPump(loop, started=lambda: True, failed=lambda: False, base=base)


def _program(depth: int) -> FrameType:
    """A frame ``depth`` calls of "program" code below the caller."""
    return sys._getframe() if depth == 0 else _program(depth - 1)


def test_program_frames_down_to_the_base_may_pump(loop: asyncio.AbstractEventLoop) -> None:
    pump = _pump(loop, sys._getframe())
    assert pump._program_frame(_program(0))
    assert pump._program_frame(_program(5))
    assert not pump._program_frame(None)


def test_a_program_frame_called_by_asyncio_may_not(loop: asyncio.AbstractEventLoop) -> None:
    pump = _pump(loop, sys._getframe())

    async def callback() -> FrameType:  # runs under asyncio's frames
        return _program(2)

    frame = loop.run_until_complete(callback())
    assert not pump._program_frame(frame)
    # without a base only the interrupted frame counts (as the pump did before)
    assert _pump(loop, None)._program_frame(frame)


def test_a_frame_outside_the_run_may_not(loop: asyncio.AbstractEventLoop) -> None:
    def runner() -> FrameType:
        return sys._getframe()

    pump = _pump(loop, runner())  # a base no longer on the stack
    assert not pump._program_frame(_program(1))


def test_blocked_only_after_start_and_until_the_end(loop: asyncio.AbstractEventLoop) -> None:
    state = {"started": False, "over": False}
    pump = PreStartPump(loop, started=lambda: state["started"], failed=lambda: False,
                        until=lambda: state["over"])
    pump.blocked_since = 1.0
    assert not pump.blocked()
    state["started"] = True
    assert pump.blocked()
    state["over"] = True
    assert not pump.blocked()
