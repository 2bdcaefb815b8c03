"""Errors of the mesh layer (Noise handshakes, secure channels, framing).

They extend the one tree in :mod:`didmesh.identity.errors`. Failures caused by what a
peer sent are :class:`~didmesh.identity.errors.RemoteError`; misuse on this machine
(calling a step out of turn, sending more than the configured limit, using a closed
channel) is :class:`~didmesh.identity.errors.LocalError`.

As with every :class:`RemoteError`, the detailed message is for the local user and the
logs; a peer only ever learns the ``code`` (and a failed handshake tells it nothing more
than that the handshake failed).
"""

from __future__ import annotations

from didmesh.identity.errors import DidmeshError, LocalError, RemoteError


class MeshError(DidmeshError):
    """A mesh-layer (Noise channel) failure."""

    code = "mesh_error"


# --------------------------------------------------------------------------- local misuse


class NoiseUsageError(MeshError, LocalError):
    """A Noise object was used out of turn or with invalid arguments (a bug in the caller)."""

    code = "noise_usage"


class UnsupportedProtocol(NoiseUsageError):
    """The Noise protocol name names a pattern, DH, cipher or hash this build does not have."""

    code = "noise_unsupported_protocol"


class NonceExhausted(MeshError, LocalError):
    """The cipher's 64-bit nonce is used up; open a new channel (or rekey both sides)."""

    code = "nonce_exhausted"


class MessageTooLarge(MeshError, LocalError):
    """An application message is larger than this channel's configured maximum."""

    code = "message_too_large"


class ChannelClosed(MeshError, LocalError):
    """The secure channel was closed or aborted earlier; open a new one."""

    code = "channel_closed"


# --------------------------------------------------------------------------- remote faults


class HandshakeFailed(MeshError, RemoteError):
    """The Noise handshake with the peer failed."""

    code = "handshake_failed"

    #: Message used when a handshake message does not decrypt. With KK and the didmesh
    #: prologue this is what a wrong static key, a different roster view *or* a message
    #: altered on the way (e.g. by a relay) looks like: the message says all three.
    MISMATCH = (
        "the handshake did not authenticate: altered in transit, or the peer holds "
        "another roster or key (if no relay or network is at fault, check that both "
        "parties use the same roster and that the peer's key in it is current)"
    )

    def __init__(self, message: str | None = None, *, reason: str = "failed") -> None:
        super().__init__(message)
        #: short machine-readable sub-reason, e.g. ``"mismatch"``, ``"malformed"``
        self.reason = reason


class DecryptFailed(MeshError, RemoteError):
    """A Noise message did not authenticate (altered, replayed, reordered or wrong key)."""

    code = "decrypt_failed"


class FrameError(MeshError, RemoteError):
    """The peer's byte stream is not a valid sequence of didmesh mesh frames."""

    code = "frame_error"


class FrameTruncated(FrameError):
    """The channel closed mid-frame: the stream ended inside a record or a message."""

    code = "frame_truncated"


class FrameTooLarge(FrameError):
    """The peer sent an application message larger than this channel accepts."""

    code = "frame_too_large"


class FrameMalformed(FrameError):
    """A record decrypted but its contents do not follow the record format."""

    code = "frame_malformed"


class RecordRejected(FrameError, DecryptFailed):
    """A record did not authenticate: it was altered, replayed, reordered or one was dropped."""

    code = "record_rejected"
