"""One mesh party, run as a process (inside a network namespace) by tests/test_adv_netns.py.

``python netns_party.py PLAN_JSON SEED_HEX``: connects to every peer (automatic path
choice: direct first, the relay after the grace period), sends one message to each peer,
waits for theirs, and prints one JSON line ``{"paths": {peer: "direct"|"relay"},
"got": {peer: text}, "error": null|text}``. Bounded by the connect timeout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey
from didmesh.session.mesh.connect import ConnectOptions, MeshConnector
from didmesh.session.mesh.plan import MeshPlan


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def app_data(self, data: bytes) -> None:
        self.data += data

    def app_closed(self) -> None:
        pass


class _Events:
    def peer_failed(self, peer: Any, exc: Exception) -> None:
        pass

    def abort_received(self, peer: Any, payload: bytes) -> None:
        pass

    def ready_received(self, peer: Any, payload: bytes) -> None:
        pass

    def bye_received(self, peer: Any) -> None:
        pass


async def main(plan_path: str, seed_hex: str) -> dict[str, Any]:
    with open(plan_path) as f:
        plan = MeshPlan.from_launch_dict(json.load(f))
    ident = IdentityKey.from_seed(bytes.fromhex(seed_hex))
    options = ConnectOptions(
        connect_timeout=25.0, direct_grace=1.0, tcp_timeout=1.0, handshake_timeout=5.0
    )
    conn = MeshConnector(plan, ident, options)
    out: dict[str, Any] = {"paths": {}, "got": {}, "error": None}
    try:
        peers = await conn.connect_all()
        sinks = {}
        for pid, peer in peers.items():
            out["paths"][str(pid)] = peer.path
            sinks[pid] = _Sink()
            peer.start(_Events())
            peer.attach(sinks[pid])
            peer.send_app(f"hello from {plan.my_party_id}".encode())
        for _ in range(200):
            if all(s.data for s in sinks.values()):
                break
            await asyncio.sleep(0.05)
        out["got"] = {str(pid): s.data.decode() for pid, s in sinks.items()}
        await asyncio.sleep(0.5)  # let the peer read ours before the links close
        for peer in peers.values():
            peer.abort()
    except DidmeshError as exc:
        out["error"] = exc.message
    finally:
        await conn.aclose()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))), flush=True)
