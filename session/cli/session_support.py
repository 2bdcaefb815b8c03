"""Helpers shared by the session command modules: the engine for the chosen identity,
relay discovery, the pump with progress on stderr, and JSON/human views of a session."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
from collections.abc import Callable, Sequence
from typing import Any

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey

from .. import errors as session_errors
from ..engine import Engine, Note, session_relays
from ..errors import InviteWithdrawn, NoRelay, SessionError, SessionRemoteError, WaitTimeout
from ..mailbox import Mailbox, RelayMailbox
from ..manifest import Manifest, validate_relay_url
from ..state import ENDED, Role, SessionState, Status
from ..words import sas_digits, sas_words
from .common import keystore, labels_of, load_identity, store_of
from .output import Output

RELAY_ENV = "DIDMESH_RELAY"
DEFAULT_TIMEOUT = 120.0


def add_timeout(parser: argparse.ArgumentParser, default: float = DEFAULT_TIMEOUT) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=default,
        metavar="SECONDS",
        help=f"give up waiting after this many seconds (default: {default:g})",
    )


def add_relay(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="URL",
        help=f"relay to fetch from (repeatable; default: ${RELAY_ENV}, then relays used before)",
    )


def engine_of(args: argparse.Namespace) -> Engine:
    key = load_identity(args)
    return Engine(store_of(args), key, labels=labels_of(args))


def my_did(args: argparse.Namespace) -> str:
    return keystore(args).entry(getattr(args, "identity", None)).did


def relays_of(args: argparse.Namespace, engine: Engine, *, required: bool = True) -> list[str]:
    urls = [validate_relay_url(u) for u in getattr(args, "relay", []) or []]
    if not urls and os.environ.get(RELAY_ENV):
        urls = [validate_relay_url(u) for u in os.environ[RELAY_ENV].split(",") if u.strip()]
    if urls:
        engine.store.remember_relays(urls)
    else:
        urls = session_relays(engine.my_sessions()) or engine.store.known_relays()
    if not urls and required:
        raise NoRelay()
    return urls


def factory(out: Output) -> Callable[[IdentityKey, Sequence[str]], Mailbox]:
    def make(identity: IdentityKey, urls: Sequence[str]) -> Mailbox:
        return RelayMailbox(urls, identity, on_warning=lambda t: out.progress(f"warning: {t}"))

    return make


def show_note(out: Output, note: Note) -> None:
    prefix = {"warning": "warning: ", "error": "error: "}.get(note.level, "")
    out.progress(prefix + note.text)


def pump(
    engine: Engine,
    urls: Sequence[str],
    out: Output,
    *,
    until: Callable[[], bool],
    timeout: float,
    what: str,
    quiet_timeout: bool = False,
    only: str | None = None,
) -> bool:
    """Run the engine's pump over ``urls``; True if ``until()`` became true. With
    ``quiet_timeout`` a timeout returns False instead of raising. With ``only`` (a
    session id) only that session's events are printed (the others are still handled)."""

    def note(n: Note) -> None:
        if only is None or n.session_id == only:
            show_note(out, n)


    async def go() -> None:
        box = factory(out)(engine.key, urls)
        try:
            await engine.run(
                box,
                until=until,
                timeout=timeout,
                on_note=note,
                factory=factory(out),
                what=what,
            )
        except WaitTimeout as exc:
            # the others may never have had a chance: say which relay was not reached
            down = box.problems() if isinstance(box, RelayMailbox) else []
            if not down:
                raise
            raise type(exc)(exc.message + " (" + "; ".join(
                f"relay {url}: {err.message}" for url, err in down) + ")") from None
        finally:
            await box.aclose()

    try:
        asyncio.run(go())
    except WaitTimeout:
        if quiet_timeout:
            return False
        raise
    return True


def sync(
    engine: Engine, urls: Sequence[str], out: Output, *, idle: float = 1.0, strict: bool = False
) -> list[tuple[str, DidmeshError]]:
    """Flush queued messages and take in what is waiting (stops after ``idle`` s quiet).

    Returns ``(url, error)`` for each relay whose inbox could not be read. Without
    ``strict`` they are warnings and the local state is shown; with it (``didmesh
    invites``) the caller must report them as an error (see :func:`relay_problems`)."""
    boxes: list[Mailbox] = []

    async def go() -> None:
        box = factory(out)(engine.key, urls)
        boxes.append(box)
        try:
            await engine.flush(box)
            batch: list[tuple[str, bytes]] = []
            while True:
                item = await box.receive(idle)
                if item is None:
                    break
                batch.append(item)
                if len(batch) >= 64:
                    for note in engine.deliver(batch):
                        show_note(out, note)
                    await box.commit()
                    batch = []
            for note in engine.deliver(batch) + engine.tick():
                show_note(out, note)
            await box.commit()
            await engine.flush(box)
        finally:
            engine.persist_sent()
            await box.aclose()

    def found() -> list[tuple[str, DidmeshError]]:
        box = boxes[0] if boxes else None
        return box.problems() if isinstance(box, RelayMailbox) else []

    try:
        asyncio.run(go())
    except DidmeshError as exc:
        if not strict:
            out.progress(
                f"warning: could not reach the relays ({exc.message}); showing local state"
            )
            return []
        return found() or [(", ".join(urls), exc)]
    return found() if strict else []


def relay_problems(problems: Sequence[tuple[str, DidmeshError]], what: str) -> DidmeshError:
    """One error naming every relay that failed and why (the first one's class)."""
    text = f"cannot {what}: " + "; ".join(
        f"relay {url}: {err.message}" for url, err in problems
    )
    try:
        return type(problems[0][1])(text)
    except TypeError:
        from didmesh.relay.errors import RelayUnreachable

        return RelayUnreachable(text)


def flush_now(engine: Engine, session_id: str, out: Output) -> bool:
    """Send the session's queued messages now; False (with a warning) if no relay took them."""
    state = engine.load(session_id)
    urls = Manifest.from_json(state.manifest).relays

    async def go() -> int:
        box = factory(out)(engine.key, urls)
        try:
            return await engine.flush(box, only=session_id)
        finally:
            engine.persist_sent()
            await box.aclose()

    try:
        asyncio.run(go())
        return True
    except DidmeshError as exc:
        if getattr(exc, "code", "") == "too_large":  # every relay refused it for its size
            out.progress(
                f"warning: not delivered ({exc.message}); retrying cannot help: it stays "
                "queued, but only a relay with a higher limit (or a smaller session) "
                "can carry it"
            )
            return False
        out.progress(
            f"warning: not delivered yet ({exc.message}); it stays queued and is retried by "
            "'didmesh session wait' or 'didmesh status'"
        )
        return False


# --------------------------------------------------------------------------- errors


def _error_classes() -> dict[str, type[SessionError]]:
    out: dict[str, type[SessionError]] = {}
    for name in dir(session_errors):
        obj = getattr(session_errors, name)
        if isinstance(obj, type) and issubclass(obj, SessionError):
            out[obj.code] = obj
    return out


def raise_state_error(state: SessionState, prefix: str = "") -> None:
    """Raise the error recorded in an ended session (failed, cancelled, revoked...),
    its message after ``prefix``."""
    err = state.error or {}
    cls = _error_classes().get(str(err.get("code")), SessionRemoteError)
    message = prefix + str(
        err.get("message") or f"session {state.session_id[:8]} is {state.status}"
    )
    if issubclass(cls, SessionRemoteError):
        raise cls(message, party=err.get("party"))
    raise cls(message)


# --------------------------------------------------------------------------- views


def who(did: str | None, labels: dict[str, str], me: str) -> str:
    if did is None:
        return "(open code seat)"
    if did == me:
        return "you"
    return f"{labels[did]} ({did})" if did in labels else did


def session_view(state: SessionState, labels: dict[str, str]) -> dict[str, Any]:
    manifest = Manifest.from_json(state.manifest)
    view: dict[str, Any] = {
        "sessionId": state.session_id,
        "name": manifest.name,
        "role": state.role,
        "status": state.status,
        "me": state.me,
        "organizer": manifest.organizer,
        "organizerName": labels.get(manifest.organizer),
        "program": program_view(manifest),
        "parties": manifest.parties,
        "threshold": manifest.threshold,
        "relays": list(manifest.relays),
        "validFrom": state.manifest["validFrom"],
        "validUntil": state.manifest["validUntil"],
        "manifestDigest": manifest.digest().hex(),
    }
    if state.invite and state.invite["credentialSubject"].get("requires"):
        view["requires"] = state.invite["credentialSubject"]["requires"]
    if state.role == Role.ORGANIZER:
        view["seats"] = [
            {
                "did": s.did,
                "name": labels.get(s.did or ""),
                "status": s.status,
                "inviteId": s.invite_id,
                "nameplate": s.nameplate,
                "requires": s.requires,
            }
            for s in state.seats
        ]
    if state.roster is not None and state.roster_hash is not None:
        digest = bytes.fromhex(state.roster_hash)
        parties = state.roster["credentialSubject"]["parties"]
        view["roster"] = {
            "hash": state.roster_hash,
            "parties": [
                {
                    "partyId": p["partyId"],
                    "did": p["id"],
                    "name": labels.get(p["id"]),
                    "sessionKey": p["sessionKey"],
                    "endpoints": p["endpoints"],
                    "confirmed": p["id"] in state.confirmations,
                }
                for p in parties
            ],
            "confirmed": len([p for p in parties if p["id"] in state.confirmations]),
        }
        if state.status == Status.AGREED:
            view["sas"] = sas_words(digest)
            view["sasDigits"] = sas_digits(digest)
    if state.error:
        view["error"] = state.error
    if state.rejected:
        view["rejected"] = state.rejected[-10:]
    return view


def program_view(manifest: Manifest) -> dict[str, Any]:
    prog = manifest.program
    view: dict[str, Any] = {
        "name": prog.name, "sha256": prog.sha256, "mpyc": prog.mpyc, "args": list(prog.args),
    }
    if prog.inputs:
        view["inputs"] = list(prog.inputs)
    if prog.is_bundle:
        view["bundle"] = {
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in prog.files],
            "totalSize": prog.total_size,
            "include": list(prog.include),
            "exclude": list(prog.exclude),
        }
    return view


def render_program(prog: dict[str, Any], indent: str = "  ") -> list[str]:
    """The program as an invitee should see it before accepting: entry, digest,
    arguments and, for a bundle, every file with its size."""
    args = " ".join(shlex.quote(a) for a in prog["args"]) if prog["args"] else "(none)"
    bundle = prog.get("bundle")
    inputs = []
    if prog.get("inputs"):
        inputs = [f"{indent}inputs      {', '.join(prog['inputs'])}  (private, each party's own: "
                  "run --input NAME=VALUE)"]
    if not bundle:
        return [
            f"{indent}program     {prog['name']}  sha256 {prog['sha256']}  MPyC {prog['mpyc']}",
            f"{indent}arguments   {args}",
            *inputs,
        ]
    lines = [
        f"{indent}program     bundle of {len(bundle['files'])} files, {bundle['totalSize']} "
        f"bytes, runs {prog['name']}  MPyC {prog['mpyc']}",
        f"{indent}digest      {prog['sha256']}  (didmesh-bundle/v1)",
        f"{indent}arguments   {args}",
        *inputs,
    ]
    for f in bundle["files"]:
        lines.append(f"{indent}  {f['size']:>10}  {f['sha256'][:16]}  {f['path']}")
    return lines


def render_session(view: dict[str, Any], out: Output, labels: dict[str, str]) -> str:
    me = view["me"]
    status = view["status"]
    colour = out.ok if status == Status.AGREED else out.bad if (
        status in ENDED or status == Status.REFUSED) else out.bold
    prog = view["program"]
    lines = [
        f"session {out.bold(view['sessionId'])}  {view['name']!r}",
        f"  status      {colour(status)}",
        f"  organizer   {who(view['organizer'], labels, me)}",
        *render_program(prog),
        f"  parties     {view['parties']} (threshold {view['threshold']})",
        f"  valid       {view['validFrom']} .. {view['validUntil']}",
        f"  relays      {' '.join(view['relays'])}",
    ]
    if view.get("requires"):
        req = view["requires"]
        lines.append(
            f"  requires    a {req.get('type') or ''} credential from "
            f"{who(req['issuer'], labels, me)}".replace("a  credential", "a credential")
        )
    if "roster" in view:
        r = view["roster"]
        lines.append(f"  roster      {r['hash']}  ({r['confirmed']}/{view['parties']} confirmed)")
        for p in r["parties"]:
            mark = out.ok("confirmed") if p["confirmed"] else out.dim("waiting")
            lines.append(f"    {p['partyId']:>2} {who(p['did'], labels, me):<60}  {mark}")
    elif view.get("seats") is not None:
        lines.append("  seats")
        lines.append(f"     0 {'you (organizer)':<60} ready")
        for i, s in enumerate(view["seats"], 1):
            label = (
                f"open code {s['nameplate']}-..." if s["did"] is None else who(s["did"], labels, me)
            )
            active = s["status"] in ("code", "invited", "accepted")
            lines.append(f"    {i if active else '-':>2} {label:<60}  {s['status']}")
    if "sas" in view:
        lines.append(f"  SAS         {out.bold(view['sas'])}   ({view['sasDigits']})")
        lines.append("              compare by voice: equal words mean equal rosters")
    if view.get("error"):
        lines.append(f"  error       {out.bad(view['error']['message'])}")
    for r in view.get("rejected", [])[-3:]:
        lines.append(out.dim(f"  rejected    {r['message']}"))
    return "\n".join(lines)


def wait_until_agreed(
    engine: Engine, sid: str, urls: Sequence[str], out: Output, *, timeout: float, what: str
) -> None:
    """Pump the session's relays until it is agreed or has ended, or the organizer refused
    this invitee's acceptance or invited it again (or ``timeout``)."""
    start = engine.status_of(sid)
    stops = {Status.AGREED, Status.REFUSED, *ENDED}
    if start != Status.INVITED:  # invited again: the fresh invite needs accepting
        stops.add(Status.INVITED)
    pump(
        engine,
        urls,
        out,
        until=lambda: engine.status_of(sid) in stops,
        timeout=timeout,
        what=what,
        only=sid,
    )


def report_session(engine: Engine, sid: str, out: Output, *, must_be_agreed: bool) -> int:
    """Print the session's view; if it must be agreed and is not, raise why (after
    printing the view in --json mode, so scripts still get the state)."""
    state = engine.load(sid)
    view = session_view(state, engine.labels)
    if must_be_agreed and state.status != Status.AGREED:
        out.result(view)
        if state.status == Status.INVITED and state.role == Role.INVITEE:
            raise InviteWithdrawn(
                f"the organizer withdrew the invite to session {sid[:8]} you accepted and "
                f"invited you again: accept the fresh invite with: didmesh accept {sid[:8]}",
                party=state.manifest.get("organizer"),
            )
        raise_state_error(state)
    out.result(view, render_session(view, out, engine.labels))
    return 0
