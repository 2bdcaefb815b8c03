"""What an Internet lab is made of, as data: sites, homes, NATs, links and addresses.

A lab is a star: one "internet" router and *sites* around it, each joined to it by an
emulated access link (one-way delay, jitter, loss, optional rate). A site is either a
public host (the relay, a public party: its address is public) or a home: a router doing
NAT for one or more parties on its LAN. Between two sites the round trip is
``2 * (delay_a + delay_b)``. Addresses are test ranges that exist only inside the lab::

    internet router     192.0.2.1 (TEST-NET-1)
    site i (public)     198.51.100.(10 + i) (TEST-NET-2): a public host, or a home's WAN
    home j's LAN        10.(j + 1).0.0/24: router .1, its parties .2, .3, ...

A topology is written as tokens, one per site (the CLI takes them as arguments)::

    public:NAME[@LINK]             a public host (``relay`` alone means ``public:relay``)
    eim:HOME:P1[,P2...][@LINK]     a home NAT with endpoint-independent mapping
    sym:HOME:P1[,P2...][@LINK]     a home NAT with random ports per destination
    LINK = DELAY_MS[/JITTER_MS[/LOSS_PERCENT[/RATE_MBIT]]]   (one way, each direction)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .netns import LabError

PUBLIC = "public"
EIM = "eim"  # endpoint-independent mapping: source ports kept where free
SYMMETRIC = "sym"  # address-and-port-dependent mapping: a random port per destination
KINDS = (PUBLIC, EIM, SYMMETRIC)
INTERNET = "inet"
INTERNET_ADDRESS = "192.0.2.1"
_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")
MAX_SITES = 200
MAX_HOSTS_PER_HOME = 50


@dataclass(frozen=True)
class Link:
    """An access link's shape, the same in both directions."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_mbit: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms <= 10_000:
            raise LabError(f"delay {self.delay_ms} ms is outside 0..10000")
        if not 0 <= self.jitter_ms <= self.delay_ms:
            raise LabError(f"jitter {self.jitter_ms} ms must be within 0..delay")
        if not 0 <= self.loss < 1:
            raise LabError(f"loss {self.loss * 100} % must be below 100")
        if self.rate_mbit is not None and not 0.01 <= self.rate_mbit <= 100_000:
            raise LabError(f"rate {self.rate_mbit} Mbit/s is outside 0.01..100000")

    def render(self) -> str:
        parts = [f"{self.delay_ms:g}", f"{self.jitter_ms:g}", f"{self.loss * 100:g}"]
        if self.rate_mbit is not None:
            parts.append(f"{self.rate_mbit:g}")
        while len(parts) > 1 and parts[-1] == "0":
            parts.pop()
        return "/".join(parts)


@dataclass(frozen=True)
class Site:
    kind: str
    name: str
    hosts: tuple[str, ...]  # a public site's one host is itself
    link: Link = field(default_factory=Link)

    @property
    def is_home(self) -> bool:
        return self.kind != PUBLIC

    def render(self) -> str:
        head = f"public:{self.name}" if not self.is_home else \
            f"{self.kind}:{self.name}:{','.join(self.hosts)}"
        link = self.link.render()
        return head if link == "0" else f"{head}@{link}"


@dataclass(frozen=True)
class Topology:
    sites: tuple[Site, ...]

    def __post_init__(self) -> None:
        if not self.sites:
            raise LabError("a lab needs at least one site")
        if len(self.sites) > MAX_SITES:
            raise LabError(f"at most {MAX_SITES} sites")
        seen: set[str] = {INTERNET}
        for site in self.sites:
            names = [site.name] + ([*site.hosts] if site.is_home else [])
            for name in names:
                if not _NAME.match(name):
                    raise LabError(f"name {name!r}: use 1 to 8 lowercase letters and digits, "
                                   "starting with a letter")
                if name in seen:
                    raise LabError(f"name {name!r} is used twice (or is reserved)")
                seen.add(name)
            if site.is_home and not 1 <= len(site.hosts) <= MAX_HOSTS_PER_HOME:
                raise LabError(f"home {site.name!r} needs 1 to {MAX_HOSTS_PER_HOME} parties")

    # ------------------------------------------------------------------ text form

    @classmethod
    def parse(cls, tokens: Iterable[str]) -> Topology:
        return cls(tuple(_parse_site(t) for t in tokens))

    def render(self) -> list[str]:
        return [s.render() for s in self.sites]

    # ------------------------------------------------------------------ lookups

    def nodes(self) -> list[str]:
        """Every namespace's node name: the internet, each site, each home's parties."""
        out = [INTERNET]
        for site in self.sites:
            out.append(site.name)
            if site.is_home:
                out.extend(site.hosts)
        return out

    def site_of(self, node: str) -> Site:
        for site in self.sites:
            if node == site.name or (site.is_home and node in site.hosts):
                return site
        raise LabError(f"no node {node!r} in this lab (nodes: {', '.join(self.nodes())})")

    def site_index(self, site: Site) -> int:
        return self.sites.index(site)

    def public_address(self, node: str) -> str:
        """The address the internet sees for ``node`` (a home's parties share their router's)."""
        if node == INTERNET:
            return INTERNET_ADDRESS
        return f"198.51.100.{10 + self.site_index(self.site_of(node))}"

    def lan(self, home: Site) -> ipaddress.IPv4Network:
        j = [s for s in self.sites if s.is_home].index(home)
        return ipaddress.IPv4Network(f"10.{j + 1}.0.0/24")

    def address(self, node: str) -> str:
        """``node``'s own address: public for the internet, sites and public hosts; a
        home's party its LAN address."""
        site = self.site_of(node) if node != INTERNET else None
        if site is None or node == site.name:
            return self.public_address(node)
        return str(self.lan(site)[site.hosts.index(node) + 2])

    def router_lan_address(self, home: Site) -> str:
        return str(self.lan(home)[1])


def _parse_site(token: str) -> Site:
    head, _, link_text = token.partition("@")
    link = _parse_link(link_text, token) if link_text else Link()
    parts = head.split(":")
    if parts == ["relay"]:
        parts = [PUBLIC, "relay"]
    kind = parts[0]
    if kind == PUBLIC and len(parts) == 2:
        return Site(PUBLIC, parts[1], (parts[1],), link)
    if kind in (EIM, SYMMETRIC) and len(parts) == 3:
        hosts = tuple(h for h in parts[2].split(",") if h)
        return Site(kind, parts[1], hosts, link)
    raise LabError(f"site {token!r}: write public:NAME, eim:HOME:P1,P2 or sym:HOME:P1 "
                   "(optionally @DELAY_MS[/JITTER_MS[/LOSS_PERCENT[/RATE_MBIT]]])")


def _parse_link(text: str, token: str) -> Link:
    try:
        nums = [float(x) for x in text.split("/")]
    except ValueError:
        nums = []
    if not 1 <= len(nums) <= 4:
        raise LabError(f"site {token!r}: the link is DELAY_MS[/JITTER_MS[/LOSS_PERCENT"
                       "[/RATE_MBIT]]], numbers only")
    nums += [0.0] * (3 - len(nums)) if len(nums) < 3 else []
    rate = nums[3] if len(nums) == 4 else None
    return Link(nums[0], nums[1], nums[2] / 100, rate)


DEFAULT: Sequence[str] = ("relay", "public:p0", "eim:h1:p1", "eim:h2:p2,p3", "sym:h3:p4")
