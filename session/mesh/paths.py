"""The small interface every path of a pair shares (specs/mesh.md, "Paths").

A :class:`Pair` is one peer's race: each path that may serve it — direct
(:mod:`.direct`), relayed and, from there, punched (:mod:`.relayed`, :mod:`.puncher`) —
runs as a :class:`Path` task until it wins (:meth:`Pair.won`: the first link whose
handshake completes), gives up on its kind (:meth:`Pair.failed`) or is cancelled because
another path won. When no kind is left the pair fails at once with the last reasons.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from .channel import SecureChannel
from .faults import ConnectFailed
from .peer import SELECT
from .plan import MeshPlan
from .transport import ByteLink


@dataclass
class Pair:
    """The race for one peer's path, as this party sees it."""

    plan: MeshPlan
    peer_id: int
    future: asyncio.Future[tuple[ByteLink, SecureChannel]]
    kinds_left: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    #: why the last inbound direct connection claiming this peer failed (unauthenticated)
    inbound_failure: str | None = None

    @property
    def initiator(self) -> bool:
        return self.plan.my_party_id < self.peer_id

    @property
    def done(self) -> bool:
        return self.future.done()

    def won(self, link: ByteLink, ch: SecureChannel) -> None:
        """``link`` completed its handshake: it is the pair's path unless another won
        first (then it is dropped). The initiator commits with SELECT."""
        if self.future.done():
            link.abort()
            return
        if self.initiator:
            link.write(ch.send(bytes((SELECT,))))
        self.future.set_result((link, ch))

    def failed(self, kind: str, why: str) -> None:
        """No path of ``kind`` can serve this pair; the pair fails if none is left."""
        self.errors.append(f"{kind}: {why}")
        self.kinds_left.discard(kind)
        if not self.kinds_left and not self.future.done():
            self.future.set_exception(self.error())

    def note(self, why: str) -> None:
        """A failed attempt that does not end its kind (the last few are kept)."""
        if why not in self.errors[-1:]:
            self.errors.append(why)
            del self.errors[:-4]

    def error(self) -> ConnectFailed:
        detail = "; ".join(self.errors[-3:]) or "no path is available"
        return ConnectFailed(
            f"cannot connect {self.plan.describe_pair(self.plan.my_party_id, self.peer_id)}: "
            f"{detail}",
            party=self.peer_id,
        )


class Path(Protocol):
    """One kind of path: tries to serve ``pair`` before ``deadline``."""

    kind: str

    async def run(self, pair: Pair, deadline: float) -> None: ...


__all__ = ["Pair", "Path"]
