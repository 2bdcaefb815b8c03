"""The verified roster view of a stored session, for the WireGuard path.

:func:`load_plan` reads ``sessions/<id>/`` from the store, verifies the agreed roster
again (:attr:`~didmesh.session.store.StoredSession.agreed_roster`) and returns the same
:class:`~didmesh.session.mesh.plan.MeshPlan` the Noise mesh uses: this party is the
session's ``me`` DID, its key the stored per-session X25519 key (checked against the
roster's entry for it).
"""

from __future__ import annotations

from collections.abc import Mapping

from didmesh.session.mesh.plan import MeshPlan, from_roster
from didmesh.session.state import ENDED
from didmesh.session.store import SessionStore

from .errors import SessionNotAgreed, WgNoSessionKey


def load_plan(
    store: SessionStore, session: str, petnames: Mapping[str, str] | None = None
) -> MeshPlan:
    """``session`` is a full id or a unique prefix (as everywhere in the CLI)."""
    stored = store.load(store.resolve(session))
    state = stored.state
    short = state.session_id[:8]
    roster = stored.agreed_roster
    if roster is None:
        if state.status in ENDED:
            raise SessionNotAgreed(
                f"session {short} ended ({state.status}) without an agreed roster; "
                "there is nothing to configure"
            )
        raise SessionNotAgreed(
            f"session {short} has no agreed roster yet (status {state.status}); "
            f"wait with: didmesh status {short} --wait"
        )
    if stored.session_private_key is None:
        raise WgNoSessionKey(f"no per-session key for {short} in {store.home}")
    return from_roster(
        roster, my_did=state.me, my_static_private=stored.session_private_key,
        petnames=petnames,
    )
