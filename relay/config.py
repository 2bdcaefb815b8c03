"""Relay configuration: defaults < config file < environment < flags (specs/relay.md, "Limits").

Every limit has a field here; :meth:`RelayConfig.public_limits` is what ``GET /info``
serves. Config files are TOML (``.toml``) or YAML (``.yaml``/``.yml``) with the same keys
as the fields; an unknown key is rejected by name. Environment variables are
``DIDMESH_RELAY_<FIELD>`` (upper case), e.g. ``DIDMESH_RELAY_INBOX_MAX_ENVELOPES=500``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import RelayConfigError

ENV_PREFIX = "DIDMESH_RELAY_"
DEFAULT_PORT = 8470


#: the largest number any setting takes: 2**53, the largest integer every JSON reader of
#: GET /info holds exactly (2**53 bytes or seconds is far beyond any real limit)
MAX_SETTING = 2**53

#: settings where 0 is allowed (0 switches the thing off)
_ZERO_OK = frozenset(
    {"port", "link_heartbeat_s", "conns_per_address", "max_connections", "drain_timeout_s",
     "stun_port", "stun_alt_port"}
)


@dataclass(frozen=True)
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    store: str = ""  # "" = SQLite in the user data dir (or $DIDMESH_HOME/relay)
    relay_id: str = ""  # "" = derived from the relay secret (shared by processes on one store)
    # mailboxes
    max_envelope_bytes: int = 64 * 1024
    max_request_bytes: int = 256 * 1024
    inbox_max_envelopes: int = 1000
    inbox_max_bytes: int = 16 * 1024 * 1024
    envelope_max_ttl_s: int = 7 * 24 * 3600
    prune_interval_s: float = 30.0
    replay_window_s: int = 900
    max_clock_skew_s: int = 60
    long_poll_max_s: float = 30.0
    fetch_max_envelopes: int = 100
    # rates (token buckets; 0 disables)
    rate_did_per_s: float = 20.0
    rate_did_burst: int = 40
    rate_ip_per_s: float = 50.0
    rate_ip_burst: int = 100
    # links
    links_per_did: int = 32
    links_total: int = 4096
    link_max_bytes: int = 1024 * 1024 * 1024
    link_max_duration_s: float = 3600.0
    link_max_frame: int = 1024 * 1024
    link_pair_timeout_s: float = 30.0
    # connections (slowloris: specs/relay.md, "Limits")
    header_timeout_s: float = 10.0  # request headers complete within this (also keep-alive idle)
    body_timeout_s: float = 30.0  # a whole request body within this
    conns_per_address: int = 256  # open connections per socket address (0: no cap)
    max_connections: int = 0  # open connections in total (0: from the descriptor limit)
    ws_idle_timeout_s: float = 300.0
    ws_heartbeat_s: float = 20.0
    link_heartbeat_s: float = 20.0  # pings on link ends (0: off; the idle timeout still applies)
    # auth
    challenge_ttl_s: int = 60
    token_ttl_s: int = 600
    # operations
    shutdown_timeout_s: float = 10.0
    drain_timeout_s: float = 30.0  # SIGTERM: running links may finish for this long (0: none)
    metrics_listen: str = ""  # HOST:PORT serving /metrics instead of the API port
    # HOST:PORT where this process takes cross-process links from the others on its Redis
    # (port 0: any; "": off, such links go through Redis pub/sub)
    link_splice_listen: str = "127.0.0.1:0"
    secret_file: str = ""  # token secret file ("" = next to the SQLite db / in Redis)
    tls_cert: str = ""  # PEM certificate chain: serve https/wss (with tls_key)
    tls_key: str = ""  # PEM private key of tls_cert (keep it 0600)
    trusted_proxies: str = ""  # addresses/networks whose X-Forwarded-For is believed
    access_log: bool = True
    # STUN (relay/stun.py): UDP Binding responder on two ports (--no-stun: off)
    stun: bool = True
    stun_host: str = ""  # "" = host
    stun_port: int = 0  # 0 = the number of the HTTP port (after binding it; a free one if taken)
    stun_alt_port: int = 0  # a second port, so clients can tell their NAT's mapping kind (0: free)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                lo = 0 if f.name.startswith("rate_") or f.name in _ZERO_OK else 1e-9
                hi = 65535 if f.name in ("port", "stun_port", "stun_alt_port") else MAX_SETTING
                if v < lo or v > hi:
                    least = "0" if lo == 0 else "1" if isinstance(v, int) else "above 0"
                    raise RelayConfigError(f"{f.name} = {v} is out of range ({least}..{hi})")
        if self.relay_id and not re.match(r"^[A-Za-z0-9._-]{1,64}$", self.relay_id):
            raise RelayConfigError("relay_id must be 1..64 characters of [A-Za-z0-9._-]")
        from .forwarded import TrustedProxies

        TrustedProxies(self.trusted_proxies)  # raises on a bad entry
        if self.stun_port and self.stun_port == self.stun_alt_port:
            raise RelayConfigError("stun_alt_port must differ from stun_port")
        if self.stun_host:
            import ipaddress

            try:
                ipaddress.ip_address(self.stun_host)
            except ValueError:
                raise RelayConfigError(
                    f"stun_host must be an IP address (or empty: host), got {self.stun_host!r}"
                ) from None
        if self.link_splice_listen:
            from .splice import parse_hostport

            try:
                host, _ = parse_hostport(self.link_splice_listen)
            except ValueError:
                raise RelayConfigError(
                    "link_splice_listen must be HOST:PORT (port 0: any) or empty, got "
                    f"{self.link_splice_listen!r}"
                ) from None
            import ipaddress

            with contextlib.suppress(ValueError):
                host = "*" if ipaddress.ip_address(host).is_unspecified else host
            if host == "*":
                raise RelayConfigError(
                    "link_splice_listen is advertised to the other relay processes as it is: "
                    "give an address they reach, not a wildcard"
                )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise RelayConfigError("tls_cert and tls_key go together: give both or neither")
        if self.max_request_bytes < self.max_envelope_bytes:
            raise RelayConfigError(
                "max_request_bytes must be at least max_envelope_bytes "
                f"({self.max_request_bytes} < {self.max_envelope_bytes})"
            )

    def replace(self, **changes: Any) -> RelayConfig:
        return dataclasses.replace(self, **changes)

    def public_limits(self) -> dict[str, Any]:
        """The limits a client adapts to (served at GET /info)."""
        keys = [
            "max_envelope_bytes", "max_request_bytes", "inbox_max_envelopes", "inbox_max_bytes",
            "envelope_max_ttl_s", "replay_window_s", "max_clock_skew_s", "long_poll_max_s",
            "fetch_max_envelopes", "rate_did_per_s", "rate_did_burst", "rate_ip_per_s",
            "rate_ip_burst", "links_per_did", "links_total", "link_max_bytes",
            "link_max_duration_s", "link_max_frame", "link_pair_timeout_s",
            "ws_idle_timeout_s", "link_heartbeat_s", "challenge_ttl_s", "token_ttl_s",
            "header_timeout_s", "body_timeout_s", "conns_per_address",
        ]
        return {k: getattr(self, k) for k in keys}


FIELD_TYPES: dict[str, type] = {
    f.name: type(f.default) for f in fields(RelayConfig)  # defaults carry the types
}


def coerce(name: str, value: Any, source: str, *, typed: bool = False) -> Any:
    """Convert ``value`` (a string from env/flags, or a parsed file value) to the field type.

    ``typed``: the value comes from a file with typed values (TOML, YAML), so it must
    already be of the field's type (an int where a float belongs is fine): ``port = "80"``
    or ``stun = "yes"`` is refused instead of read as if it came from the environment.
    """
    if name not in FIELD_TYPES:
        if name == "trust_forwarded_for":
            raise RelayConfigError(
                f"relay setting trust_forwarded_for (in {source}) is gone: it believed any "
                "X-Forwarded-For; list your proxies in trusted_proxies instead"
            )
        raise RelayConfigError(f"unknown relay setting {name!r} in {source}")
    typ = FIELD_TYPES[name]
    try:
        if typed and (
            isinstance(value, bool) != (typ is bool)
            or (typ is str and not isinstance(value, str))
            or (typ is int and not isinstance(value, int))
            or (typ is float and not isinstance(value, (int, float)))
        ):
            raise ValueError(value)
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError(value)
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(value)
            return f
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError, OverflowError):
        raise RelayConfigError(
            f"relay setting {name} in {source} must be {typ.__name__}, got {value!r}"
        ) from None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RelayConfigError(f"cannot read relay config file {path}: {exc}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(raw.decode())
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw) or {}
        else:
            raise RelayConfigError(f"relay config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RelayConfigError(f"relay config file {path} is malformed: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError
        if type(exc).__module__.startswith("yaml"):
            raise RelayConfigError(f"relay config file {path} is malformed: {exc}") from exc
        raise
    if not isinstance(data, dict):
        raise RelayConfigError(f"relay config file {path} must be a table/mapping of settings")
    if isinstance(data.get("relay"), dict) and len(data) == 1:  # allow a [relay] table
        data = data["relay"]
    return {str(k): coerce(str(k), v, str(path), typed=True) for k, v in data.items()}


def load_config(
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> RelayConfig:
    """Merge defaults, ``config_file``, ``env`` (``DIDMESH_RELAY_*``) and ``flags``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file = config_file or env.get(ENV_PREFIX + "CONFIG")
    if file:
        values.update(read_config_file(Path(file)))
    for name in FIELD_TYPES:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = coerce(name, env[key], f"${key}")
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = coerce(name, value, f"--{name.replace('_', '-')}")
    return RelayConfig(**values)
