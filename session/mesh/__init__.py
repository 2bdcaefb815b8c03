"""didmesh.session.mesh: Noise handshakes and secure channels between the parties.

Two layers (specs/mesh.md):

* the recipe: :class:`MeshHandshake` (Noise KK between two roster members, the lower
  party id initiates, prologue from :func:`didmesh_prologue`) turning into a
  :class:`SecureChannel` (framing over the Noise transport);
* the low-level, spec-shaped Noise core: :mod:`.noise` (CipherState, SymmetricState,
  HandshakeState -> NoiseTransport), :mod:`.patterns`, :mod:`.primitives`, and
  :mod:`.framing` (records and application messages).

Everything here is sans-IO: bytes in, bytes out, no sockets, no clock.

The names below are imported when first used (PEP 562), not with the package: a party
process pre-dials its early punch (:mod:`.party`, :mod:`.predial`) before it pays for
cryptography's import.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # as typing's, without importing typing (a few ms)
if TYPE_CHECKING:
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

#: name -> the submodule that defines it
_LAZY = {
    "MESH_PROLOGUE_LABEL": "channel", "MESH_PROTOCOL_NAME": "channel",
    "MeshHandshake": "channel", "SecureChannel": "channel", "didmesh_prologue": "channel",
    "DEFAULT_MAX_MESSAGE_SIZE": "framing", "FrameDecoder": "framing",
    "FrameEncoder": "framing", "CipherState": "noise", "HandshakeState": "noise",
    "NoiseProtocol": "noise", "NoiseTransport": "noise", "SymmetricState": "noise",
    "KeyPair": "primitives",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
