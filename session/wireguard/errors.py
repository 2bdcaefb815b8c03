"""Errors of the WireGuard path (specs/wireguard.md, "Errors"), in the one tree."""

from __future__ import annotations

from didmesh.identity.errors import LocalError, RemoteError
from didmesh.session.errors import SessionError


class WireGuardError(SessionError):
    """A failure while deriving WireGuard keys or configs from a roster."""

    code = "wireguard_error"


class WgUsageError(WireGuardError, LocalError):
    """The WireGuard command cannot be carried out as asked."""

    code = "wireguard_usage"


class SessionNotAgreed(WgUsageError):
    """The session has no agreed roster yet (wait with: didmesh status SESSION --wait)."""

    code = "wireguard_session_not_agreed"


class WgNoSessionKey(WgUsageError):
    """This home holds no per-session key for the session, so it cannot be a WireGuard peer."""

    code = "wireguard_no_session_key"


class WgConfigInvalid(WgUsageError):
    """A WireGuard configuration file is malformed or uses a key didmesh does not know."""

    code = "wireguard_config_invalid"


class WgPeerKeyInvalid(WireGuardError, RemoteError):
    """A party's session key in the roster is unusable for WireGuard (low-order point)."""

    code = "wireguard_peer_key_invalid"


class WgUnavailable(WgUsageError):
    """This machine or user cannot bring a WireGuard interface up (privileges, device, binary)."""

    code = "wireguard_unavailable"


class WgTunnelFailed(WireGuardError, LocalError):
    """The session's WireGuard interface could not be brought up or taken down here."""

    code = "wireguard_tunnel_failed"
