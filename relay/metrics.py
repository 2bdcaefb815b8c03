"""Prometheus text metrics (``GET /metrics``): this process's figures, its memory and
descriptors, and totals shared by every process on a Redis store."""

from __future__ import annotations

import os
from collections import Counter

#: counters summed across processes (``didmesh_relay_cluster_<name>_total``)
SHARED = (
    "envelopes_stored", "envelopes_delivered", "envelopes_acked", "links_total",
    "link_bytes_forwarded", "link_frames_forwarded", "requests",
)


def process_stats() -> dict[str, int]:
    """Resident memory (bytes) and open descriptors of this process (Linux /proc)."""
    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass
    return out


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
        self.links_spliced = 0  # second ends this process spliced to another process
        self.links_splice_failed = 0  # ... that went through Redis pub/sub instead
        self.link_bytes_forwarded = 0
        self.link_frames_forwarded = 0
        self.ws_push_active = 0
        self.requests = 0
        self.store_disagrees = 0
        self.rejections: Counter[str] = Counter()

    def reject(self, code: str) -> None:
        self.rejections[code] += 1

    def counters(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in SHARED}

    def render(
        self,
        *,
        process: dict[str, int] | None = None,
        connections: tuple[int, int, int] | None = None,
        store_up: bool | None = None,
        cluster: dict[str, int] | None = None,
    ) -> str:
        """``connections``: (open, refused per address, refused in total);
        ``cluster``: totals of every process on the store (None: this one only)."""
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
        metric("links_spliced_total", "counter",
               "Second link ends spliced to the process holding the first.", self.links_spliced)
        metric("links_splice_failed_total", "counter",
               "Second link ends whose splice failed (they went through Redis pub/sub).",
               self.links_splice_failed)
        metric("link_bytes_forwarded_total", "counter", "Bytes forwarded on links.",
               self.link_bytes_forwarded)
        metric("link_frames_forwarded_total", "counter", "Frames forwarded on links.",
               self.link_frames_forwarded)
        metric("push_connections", "gauge", "Open inbox push WebSockets.", self.ws_push_active)
        metric("requests_total", "counter", "HTTP requests handled.", self.requests)
        metric("store_disagrees", "gauge",
               "1 if this process's secret or relay id differs from its peers' on the store.",
               self.store_disagrees)
        proc = process or {}
        if "rss_bytes" in proc:
            metric("process_resident_memory_bytes", "gauge", "Resident memory of this process.",
                   proc["rss_bytes"])
        if "open_fds" in proc:
            metric("process_open_fds", "gauge", "Open file descriptors of this process.",
                   proc["open_fds"])
        if connections is not None:
            metric("connections_open", "gauge", "Open client connections.", connections[0])
            metric("connections_refused_address_total", "counter",
                   "Connections refused: over conns_per_address.", connections[1])
            metric("connections_refused_total_total", "counter",
                   "Connections refused: over max_connections.", connections[2])
        if store_up is not None:
            metric("store_up", "gauge", "1 if the store (Redis, SQLite) answers.", int(store_up))
        for name, value in sorted((cluster or {}).items()):
            metric(f"cluster_{name}_total", "counter",
                   f"{name.replace('_', ' ')}: sum over every process on the store.", value)
        out.append("# HELP didmesh_relay_rejections_total Requests refused, by error code.")
        out.append("# TYPE didmesh_relay_rejections_total counter")
        for code in sorted(self.rejections):
            out.append(f'didmesh_relay_rejections_total{{code="{code}"}} {self.rejections[code]}')
        return "\n".join(out) + "\n"
