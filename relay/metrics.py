"""Prometheus text metrics (``GET /metrics``), per relay process."""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.envelopes_stored = 0
        self.envelopes_duplicate = 0
        self.envelopes_delivered = 0
        self.envelopes_acked = 0
        self.envelopes_expired = 0
        self.links_active = 0
        self.links_waiting = 0
        self.links_total = 0
        self.link_bytes_forwarded = 0
        self.link_frames_forwarded = 0
        self.ws_push_active = 0
        self.requests = 0
        self.store_disagrees = 0
        self.rejections: Counter[str] = Counter()

    def reject(self, code: str) -> None:
        self.rejections[code] += 1

    def render(self) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, value: float, labels: str = "") -> None:
            out.append(f"# HELP didmesh_relay_{name} {help_}")
            out.append(f"# TYPE didmesh_relay_{name} {kind}")
            out.append(f"didmesh_relay_{name}{labels} {value}")

        metric("envelopes_stored_total", "counter", "Envelopes stored.", self.envelopes_stored)
        metric("envelopes_duplicate_total", "counter", "Idempotent re-posts answered.",
               self.envelopes_duplicate)
        metric("envelopes_delivered_total", "counter", "Envelopes sent to recipients.",
               self.envelopes_delivered)
        metric("envelopes_acked_total", "counter", "Envelopes acknowledged and deleted.",
               self.envelopes_acked)
        metric("envelopes_expired_total", "counter", "Envelopes deleted by TTL pruning.",
               self.envelopes_expired)
        metric("links_active", "gauge", "Links with both ends joined.", self.links_active)
        metric("links_waiting", "gauge", "Link ends waiting for their peer.", self.links_waiting)
        metric("links_opened_total", "counter", "Links established.", self.links_total)
        metric("link_bytes_forwarded_total", "counter", "Bytes forwarded on links.",
               self.link_bytes_forwarded)
        metric("link_frames_forwarded_total", "counter", "Frames forwarded on links.",
               self.link_frames_forwarded)
        metric("push_connections", "gauge", "Open inbox push WebSockets.", self.ws_push_active)
        metric("requests_total", "counter", "HTTP requests handled.", self.requests)
        metric("store_disagrees", "gauge",
               "1 if this process's secret or relay id differs from its peers' on the store.",
               self.store_disagrees)
        out.append("# HELP didmesh_relay_rejections_total Requests refused, by error code.")
        out.append("# TYPE didmesh_relay_rejections_total counter")
        for code in sorted(self.rejections):
            out.append(f'didmesh_relay_rejections_total{{code="{code}"}} {self.rejections[code]}')
        return "\n".join(out) + "\n"
