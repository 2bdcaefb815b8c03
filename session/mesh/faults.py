"""Errors of the mesh *runtime*: paths, liveness, aborts and MPyC runs (specs/mesh.md, "Abort").

They extend :class:`~didmesh.session.mesh.errors.MeshError`. Each error that is about
one party carries ``party`` (its id) so that callers can name it; the message already
names it by petname or DID (see :meth:`MeshPlan.describe`).
"""

from __future__ import annotations

from didmesh.identity.errors import LocalError, RemoteError

from .errors import MeshError


class PartyError(MeshError):
    """A mesh failure attributed to one party (``party`` is its id, or ``None``)."""

    def __init__(self, message: str | None = None, *, party: int | None = None) -> None:
        super().__init__(message)
        self.party = party


# --------------------------------------------------------------------------- local


class PlanError(MeshError, LocalError):
    """The mesh plan (roster view handed to the mesh) is inconsistent."""

    code = "invalid_mesh_plan"


class PathUnavailable(MeshError, LocalError):
    """No path of the requested kind exists (e.g. ``--relay-only`` with no relay)."""

    code = "path_unavailable"


class MpycIncompatible(MeshError, LocalError):
    """The installed MPyC does not have the hook didmesh needs (didmesh supports 0.10 and 0.11)."""

    code = "mpyc_incompatible"


class ReservedOption(MeshError, LocalError):
    """The program's arguments set an MPyC option that didmesh sets itself (-M, -I, -P, ...)."""

    code = "reserved_mpyc_option"


class ProgramFailed(PartyError, LocalError):
    """The MPC program failed on this machine."""

    code = "program_failed"


class ProgramExited(ProgramFailed):
    """The program ended with a non-zero exit status (``sys.exit(n)``) before the joint
    run completed; ``didmesh run`` exits with that status (as ``python PROGRAM`` would),
    the peers were told."""

    code = "program_exited"

    def __init__(self, message: str | None = None, *, party: int | None = None,
                 exit_code: int = 1) -> None:
        super().__init__(message, party=party)
        self.exit_code = exit_code


class RunInterrupted(ProgramFailed):
    """The run was stopped on this machine (Ctrl-C or SIGTERM); the peers were told."""

    code = "interrupted"
    exit_code = 130

    def __init__(self, message: str | None = None, *, party: int | None = None,
                 exit_code: int = 130) -> None:
        super().__init__(message, party=party)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- remote


class ConnectFailed(PartyError, RemoteError):
    """A pair of parties could not connect (no path completed a handshake in time)."""

    code = "mesh_connect_failed"


class PeerLost(PartyError, RemoteError):
    """A party disconnected or died during the run."""

    code = "peer_lost"


class PeerUnresponsive(PeerLost):
    """A party stopped responding (no traffic and no heartbeat within the timeout)."""

    code = "peer_unresponsive"


class ProgramStalled(PartyError, RemoteError):
    """The program made no progress: no MPyC message moved on any channel for the timeout
    while every peer was alive (the parties' programs wait for each other), or a peer's
    program ended without reaching ``mpc.start()``, where this party's waits."""

    code = "program_stalled"


class PeerAborted(PartyError, RemoteError):
    """A party aborted the run and said so in a signed abort message."""

    code = "peer_aborted"


class InvalidAbort(PartyError, RemoteError):
    """An abort message was malformed or its signature did not verify."""

    code = "invalid_abort"


class PeerMisbehaved(PartyError, RemoteError):
    """A party sent something the mesh protocol does not allow."""

    code = "peer_misbehaved"


class RelayLost(MeshError, RemoteError):
    """A relay lost a relayed link and it could not be resumed in time (on that relay or
    another of the session): the relay is at fault, not the party at the link's other end."""

    code = "relay_lost"

    def __init__(self, message: str | None = None, *, relay: str = "") -> None:
        super().__init__(message)
        self.relay = relay
