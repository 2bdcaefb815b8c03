"""didmesh.session.mesh: Noise handshakes and secure channels between the parties.

Two layers (specs/mesh.md):

* the recipe: :class:`MeshHandshake` (Noise KK between two roster members, the lower
  party id initiates, prologue from :func:`didmesh_prologue`) turning into a
  :class:`SecureChannel` (framing over the Noise transport);
* the low-level, spec-shaped Noise core: :mod:`.noise` (CipherState, SymmetricState,
  HandshakeState -> NoiseTransport), :mod:`.patterns`, :mod:`.primitives`, and
  :mod:`.framing` (records and application messages).

Everything here is sans-IO: bytes in, bytes out, no sockets, no clock.
"""

from __future__ import annotations

from .channel import (
    MESH_PROLOGUE_LABEL,
    MESH_PROTOCOL_NAME,
    MeshHandshake,
    SecureChannel,
    didmesh_prologue,
)
from .framing import DEFAULT_MAX_MESSAGE_SIZE, FrameDecoder, FrameEncoder
from .noise import CipherState, HandshakeState, NoiseProtocol, NoiseTransport, SymmetricState
from .primitives import KeyPair

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MESH_PROLOGUE_LABEL",
    "MESH_PROTOCOL_NAME",
    "CipherState",
    "FrameDecoder",
    "FrameEncoder",
    "HandshakeState",
    "KeyPair",
    "MeshHandshake",
    "NoiseProtocol",
    "NoiseTransport",
    "SecureChannel",
    "SymmetricState",
    "didmesh_prologue",
]
