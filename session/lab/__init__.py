"""An Internet lab in network namespaces, shipped as code (test and experiment code).

Home routers doing NAT (endpoint-independent or symmetric), public hosts, a relay, and
access links with emulated delay, jitter and loss. See specs/lab.md and
``python -m didmesh.session.lab --help``.
"""

from .lab import Lab, available, lab
from .netns import LabError
from .topology import DEFAULT, Link, Site, Topology

__all__ = ["DEFAULT", "Lab", "LabError", "Link", "Site", "Topology", "available", "lab"]
