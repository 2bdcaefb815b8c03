"""Render and parse WireGuard configuration files (specs/wireguard.md, section 5).

Two formats, rendered deterministically from a :class:`~.config.WgConfig`:

* ``setconf``: what ``wg setconf IFACE FILE`` takes (wg(8), "CONFIGURATION FILE FORMAT"):
  ``[Interface]`` PrivateKey, ListenPort; one ``[Peer]`` per other party.
* ``wg-quick``: the same plus ``Address`` (this party's tunnel addresses with the
  session's prefixes), for ``wg-quick up FILE`` (wg-quick(8)).

:func:`parse_conf` reads either strictly: unknown keys are rejected by name, a key given
twice (other than the list-valued ones) is an error, keys must be canonical base64, and
the text is size-capped before parsing. Tests use it to compare ``wg showconf`` output
with what didmesh rendered.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .config import WgConfig, WgPeer
from .errors import WgConfigInvalid
from .keys import decode_key, encode_key

MAX_CONF_BYTES = 1024 * 1024

_SETCONF_INTERFACE = ("PrivateKey", "ListenPort", "FwMark")
_QUICK_INTERFACE = (
    "Address", "DNS", "MTU", "Table", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig",
)  # fmt: skip
_PEER = ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
_LISTS = {"AllowedIPs", "Address", "DNS", "PreUp", "PostUp", "PreDown", "PostDown"}


# --------------------------------------------------------------------------- rendering


def _header(cfg: WgConfig, fmt: str) -> list[str]:
    v4, v6 = cfg.interface_addresses()
    lines = [
        f"# didmesh WireGuard config ({fmt}) for session {cfg.session_id}",
        f"# party {cfg.party_id} ({cfg.did})",
        f"# roster hash {cfg.roster_hash.hex()}",
        "# holds this party's private key and pairwise preshared keys: keep it mode 0600",
    ]
    if fmt == "setconf":
        lines.append(f"# tunnel addresses (set with 'ip address add ... dev IFACE'): {v4} {v6}")
    return lines


def _peer_lines(peer: WgPeer) -> list[str]:
    lines = [
        "",
        f"# party {peer.party_id} ({peer.did})",
        "[Peer]",
        f"PublicKey = {encode_key(peer.public_key)}",
        f"PresharedKey = {encode_key(peer.preshared_key)}",
        f"AllowedIPs = {', '.join(peer.allowed_ips)}",
    ]
    if peer.endpoint is not None:
        lines.append(f"Endpoint = {peer.endpoint}")
    if peer.keepalive is not None:
        lines.append(f"PersistentKeepalive = {peer.keepalive}")
    return lines


def _render(cfg: WgConfig, fmt: str) -> str:
    lines = [*_header(cfg, fmt), "[Interface]", f"PrivateKey = {encode_key(cfg.private_key)}"]
    if cfg.listen_port is not None:
        lines.append(f"ListenPort = {cfg.listen_port}")
    if fmt == "wg-quick":
        lines.append(f"Address = {', '.join(cfg.interface_addresses())}")
    for peer in cfg.peers:
        lines += _peer_lines(peer)
    return "\n".join(lines) + "\n"


def render_setconf(cfg: WgConfig) -> str:
    """The config for ``wg setconf IFACE FILE`` (addresses are set separately)."""
    return _render(cfg, "setconf")


def render_wg_quick(cfg: WgConfig) -> str:
    """The config for ``wg-quick up FILE`` (name the file ``<interface>.conf``)."""
    return _render(cfg, "wg-quick")


RENDERERS = {"setconf": render_setconf, "wg-quick": render_wg_quick}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, repr=False)
class ParsedPeer:
    public_key: bytes
    preshared_key: bytes | None = None
    allowed_ips: frozenset[str] = frozenset()
    endpoint: str | None = None
    keepalive: int | None = None

    def __repr__(self) -> str:
        return f"ParsedPeer({encode_key(self.public_key)}, endpoint={self.endpoint!r})"


@dataclass(frozen=True, repr=False)
class ParsedConf:
    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: str | None = None
    addresses: tuple[str, ...] = ()
    quick: dict[str, tuple[str, ...]] = field(default_factory=dict)  # other wg-quick keys
    peers: tuple[ParsedPeer, ...] = ()

    def __repr__(self) -> str:
        return f"ParsedConf(listen_port={self.listen_port}, peers={len(self.peers)})"

    def peers_by_key(self) -> dict[bytes, ParsedPeer]:
        return {p.public_key: p for p in self.peers}


def _canonical_key(name: str, allowed: tuple[str, ...], where: str) -> str:
    for known in allowed:
        if known.lower() == name.lower():
            return known
    raise WgConfigInvalid(f"{where}: unknown key {name!r} (known: {', '.join(allowed)})")


def _int(value: str, what: str, hi: int) -> int:
    if not value.isdigit() or int(value) > hi:
        raise WgConfigInvalid(f"{what} = {value!r} is not an integer in 0..{hi}")
    return int(value)


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise WgConfigInvalid(f"AllowedIPs: {value!r} is not an IP network") from None


def _interface_address(value: str) -> str:
    try:
        return str(ipaddress.ip_interface(value))
    except ValueError:
        raise WgConfigInvalid(f"Address: {value!r} is not an address/prefix") from None


def _sections(text: str, quick: bool) -> list[tuple[str, dict[str, list[str]]]]:
    sections: list[tuple[str, dict[str, list[str]]]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"line {n}"
        if line.startswith("["):
            kind = line.lower()
            if kind not in ("[interface]", "[peer]"):
                raise WgConfigInvalid(f"{where}: unknown section {line!r}")
            sections.append((kind[1:-1], {}))
            continue
        if not sections:
            raise WgConfigInvalid(f"{where}: a key before any [Interface] or [Peer] section")
        name, sep, value = line.partition("=")
        if not sep:
            raise WgConfigInvalid(f"{where}: expected 'Key = value'")
        kind, values = sections[-1]
        allowed = _PEER if kind == "peer" else _SETCONF_INTERFACE + (
            _QUICK_INTERFACE if quick else ())
        key = _canonical_key(name.strip(), allowed, where)
        if key in values and key not in _LISTS:
            raise WgConfigInvalid(f"{where}: {key} is given twice")
        items = [v.strip() for v in value.split(",")] if key in _LISTS else [value.strip()]
        values.setdefault(key, []).extend(v for v in items if v)
    return sections


def _peer(values: dict[str, list[str]]) -> ParsedPeer:
    if "PublicKey" not in values:
        raise WgConfigInvalid("a [Peer] section has no PublicKey")
    psk = values.get("PresharedKey")
    keepalive = values.get("PersistentKeepalive")
    endpoint = values.get("Endpoint")
    ka = None
    if keepalive and keepalive[0] != "off":
        ka = _int(keepalive[0], "PersistentKeepalive", 65535) or None
    return ParsedPeer(
        public_key=decode_key(values["PublicKey"][0], "PublicKey"),
        preshared_key=decode_key(psk[0], "PresharedKey") if psk else None,
        allowed_ips=frozenset(_network(v) for v in values.get("AllowedIPs", [])),
        endpoint=endpoint[0] if endpoint else None,
        keepalive=ka,
    )


def parse_conf(text: str, *, quick: bool = False) -> ParsedConf:
    """Parse a ``wg setconf`` (``quick=False``) or wg-quick (``quick=True``) config."""
    if len(text) > MAX_CONF_BYTES:
        raise WgConfigInvalid(f"the config is {len(text)} characters; the limit is "
                              f"{MAX_CONF_BYTES}")
    sections = _sections(text, quick)
    interfaces = [v for kind, v in sections if kind == "interface"]
    if len(interfaces) > 1:
        raise WgConfigInvalid("more than one [Interface] section")
    iface = interfaces[0] if interfaces else {}
    peers = tuple(_peer(v) for kind, v in sections if kind == "peer")
    if len({p.public_key for p in peers}) != len(peers):
        raise WgConfigInvalid("two [Peer] sections have the same PublicKey")
    private = iface.get("PrivateKey")
    port = iface.get("ListenPort")
    fwmark = iface.get("FwMark")
    return ParsedConf(
        private_key=decode_key(private[0], "PrivateKey") if private else None,
        listen_port=_int(port[0], "ListenPort", 65535) if port else None,
        fwmark=fwmark[0] if fwmark else None,
        addresses=tuple(_interface_address(a) for a in iface.get("Address", [])),
        quick={k: tuple(v) for k, v in iface.items()
               if k in _QUICK_INTERFACE and k != "Address"},
        peers=peers,
    )
