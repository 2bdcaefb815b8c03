"""Recording fakes for a mesh peer's callbacks, shared by the scenarios that drive real
peer channels (tests/test_adv_relay.py, tests/test_adv_resume.py).

* :class:`Events` -- the peer-events interface (``PeerChannel.start(events)``): records
  each failure in ``failed``, ignores the rest;
* :class:`Sink` -- the application side (``PeerChannel.attach(sink)``): collects the
  bytes delivered in ``data``;
* :class:`LinkSink` -- a relayed link's receiver (``RelayedLink.set_receiver(sink)``,
  tests/test_mesh_relay_limits.py, tests/test_mesh_resume_link.py): collects the bytes in
  ``data`` and each end of the stream in ``eof``.
"""

from __future__ import annotations

from typing import Any

from didmesh.identity.errors import DidmeshError


class Events:
    def __init__(self) -> None:
        self.failed: list[DidmeshError] = []

    def peer_failed(self, peer: Any, exc: DidmeshError) -> None:
        self.failed.append(exc)

    def abort_received(self, peer: Any, payload: bytes) -> None: ...
    def ready_received(self, peer: Any, payload: bytes) -> None: ...
    def bye_received(self, peer: Any) -> None: ...


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def app_data(self, data: bytes | memoryview) -> None:
        self.data += data

    def app_closed(self) -> None: ...


class LinkSink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof: list[BaseException | None] = []

    def link_data(self, data: bytes) -> None:
        self.data += data

    def link_eof(self, exc: BaseException | None) -> None:
        self.eof.append(exc)
