"""``didmesh credential issue`` and ``didmesh verify``."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from didmesh.identity.credentials import (
    VERIFIABLE_PRESENTATION,
    VerifiedCredential,
    format_datetime,
    issue_credential,
    parse_datetime,
    parse_untrusted,
    verify_credential,
    verify_presentation,
)
from didmesh.identity.errors import CredentialError, DidmeshError, LocalError
from didmesh.identity.jsonld import load_context
from didmesh.identity.resolver import did_method

from .common import add_identity_args, load_identity, write_out
from .output import Output

if TYPE_CHECKING:
    from ..mesh.receipt import TrailReport

V2_CONTEXT = "https://www.w3.org/ns/credentials/v2"
DIDMESH_CONTEXT = "https://didmesh.dev/ns/v1"
SUITES = ("eddsa-rdfc-2022", "eddsa-jcs-2022", "Ed25519Signature2020")


class CliInputError(LocalError):
    """A file or option given on the command line cannot be used."""

    code = "bad_input"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("credential", help="issue Verifiable Credentials", parents=[common])
    creds = p.add_subparsers(dest="credential_command", metavar="ACTION")
    creds.required = True
    issue = creds.add_parser(
        "issue", help="issue a credential from your identity", parents=[common]
    )
    issue.add_argument("--subject", required=True, help="the subject's DID")
    issue.add_argument(
        "--claims",
        required=True,
        metavar="FILE",
        help="JSON object of claims about the subject ('-' for stdin); signed as "
        "credentialSubject.claims",
    )
    issue.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="credential type besides VerifiableCredential (repeatable), e.g. Membership",
    )
    issue.add_argument("--valid-until", metavar="TIME", help="expiry, e.g. 2027-01-01T00:00:00Z")
    issue.add_argument("--valid-from", metavar="TIME", help="start of validity (default: now)")
    issue.add_argument(
        "--suite",
        choices=SUITES,
        default="eddsa-rdfc-2022",
        help="proof suite (Ed25519Signature2020 issues a VC 1.1 credential for v1-only peers)",
    )
    issue.add_argument("--out", metavar="FILE", help="write the credential here (default: stdout)")
    add_identity_args(issue)
    issue.set_defaults(func=cmd_issue)

    ver = sub.add_parser(
        "verify",
        help="verify credentials or presentations (exit 0 if all valid); several run "
        "receipts are also checked as one run's complete trail",
        parents=[common],
    )
    ver.add_argument("files", nargs="+", metavar="FILE", help="VC or VP JSON files ('-' = stdin)")
    ver.add_argument("--challenge", help="the challenge a presentation must carry")
    ver.add_argument("--domain", help="the domain a presentation must be bound to")
    ver.add_argument("--issuer", help="require this issuer DID")
    ver.add_argument("--at", metavar="TIME", help="check validity at TIME instead of now")
    ver.set_defaults(func=cmd_verify)


def _read(path: str, limit: int = 256 * 1024) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read(limit + 1)
        with open(path, "rb") as fh:
            return fh.read(limit + 1)
    except OSError as exc:
        raise CliInputError(f"cannot read {path}: {exc.strerror}") from exc


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_datetime(value, option, "command line")
    except CredentialError as exc:
        raise CliInputError(exc.message.removeprefix("command line: ")) from None


def cmd_issue(args: argparse.Namespace, out: Output) -> int:
    try:
        did_method(args.subject)
    except DidmeshError as exc:
        raise CliInputError(f"--subject: {exc.message}") from None
    try:
        claims = parse_untrusted(_read(args.claims))
    except CliInputError:
        raise
    except DidmeshError as exc:
        where = "stdin" if args.claims == "-" else args.claims
        raise CliInputError(f"--claims {where}: {exc.message}") from None
    if "id" in claims and claims["id"] != args.subject:
        raise CliInputError("the claims file has an 'id' that differs from --subject")
    key = load_identity(args)
    now = datetime.now(UTC)
    valid_from = _time(args.valid_from, "--valid-from") or now
    valid_until = _time(args.valid_until, "--valid-until")
    if valid_until is not None and valid_until <= valid_from:
        raise CliInputError("--valid-until must be later than the start of validity")
    # Claims are signed as one JSON literal under didmesh's `claims` term (@json), so any
    # key is covered by the signature; no claim is mapped through an undefined term.
    subject: dict[str, Any] = {"id": args.subject}
    rest = {k: v for k, v in claims.items() if k != "id"}
    if rest:
        subject["claims"] = rest
    types = ["VerifiableCredential", *[t for t in args.types if t != "VerifiableCredential"]]
    cred: dict[str, Any] = {"id": f"urn:uuid:{uuid.uuid4()}", "type": types, "issuer": key.did}
    if args.suite == "Ed25519Signature2020":
        # The interop suite: VC 1.1 verifiers (didkit) load only the contexts they ship,
        # so didmesh's terms travel inline (the same definitions as DIDMESH_CONTEXT).
        inline = copy.deepcopy(load_context(DIDMESH_CONTEXT)["@context"])
        cred["@context"] = ["https://www.w3.org/2018/credentials/v1", inline]
        cred["issuanceDate"] = format_datetime(valid_from)
        if valid_until:
            cred["expirationDate"] = format_datetime(valid_until)
    else:
        cred["@context"] = [V2_CONTEXT, DIDMESH_CONTEXT]
        cred["validFrom"] = format_datetime(valid_from)
        if valid_until:
            cred["validUntil"] = format_datetime(valid_until)
    cred["credentialSubject"] = subject
    signed = issue_credential(cred, key, suite=args.suite)
    text = json.dumps(signed, indent=2) + "\n"
    if args.out:
        write_out(args.out, text.encode())
        out.progress(f"wrote credential {signed['id']} to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _describe(vc: VerifiedCredential) -> dict[str, Any]:
    return {
        "id": vc.document.get("id"),
        "issuer": vc.issuer,
        "subjects": list(vc.subject_ids),
        "types": list(vc.types),
        "validFrom": format_datetime(vc.valid_from) if vc.valid_from else None,
        "validUntil": format_datetime(vc.valid_until) if vc.valid_until else None,
        "suite": vc.suite,
    }


def _verify_one(data: bytes, args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    doc = parse_untrusted(data)
    types = doc.get("type")
    is_vp = types == VERIFIABLE_PRESENTATION or (
        isinstance(types, list) and VERIFIABLE_PRESENTATION in types
    )
    if not is_vp:
        vc = verify_credential(doc, now=now, expected_issuer=args.issuer)
        info = {"kind": "credential", **_describe(vc)}
        if "RunReceipt" in vc.types:
            info["runReceipt"] = vc.document["credentialSubject"]
        return info
    notes = []
    challenge, domain = args.challenge, args.domain
    if challenge is None:
        notes.append("challenge not checked (pass --challenge)")
    if domain is None:
        notes.append("domain not checked (pass --domain)")
    vp = verify_presentation(doc, now=now, challenge=challenge, domain=domain)
    if args.issuer and any(c.issuer != args.issuer for c in vp.credentials):
        raise CredentialError(f"a credential in the presentation is not issued by {args.issuer}")
    return {
        "kind": "presentation",
        "holder": vp.holder or vp.signer,  # no holder named: who signed it
        "suite": vp.suite,
        "challenge": vp.challenge,
        "domain": vp.domain,
        "credentials": [_describe(c) for c in vp.credentials],
        "notes": notes,
    }


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    now = _time(args.at, "--at") or datetime.now(UTC)
    results = []
    for path in args.files:
        data = _read(path)
        try:
            info = _verify_one(data, args, now)
            results.append({"file": path, "valid": True, **info})
        except CredentialError as exc:
            results.append(
                {"file": path, "valid": False, "error": exc.code, "message": exc.message}
            )
    all_valid = all(r["valid"] for r in results)
    when = f"valid at {format_datetime(now)}" if args.at else "valid now"
    receipts = [(r["file"], r["issuer"], r["runReceipt"]) for r in results if "runReceipt" in r]
    trail = None
    if len(receipts) >= 2:
        from ..mesh.receipt import check_trail  # the mesh only when receipts are given

        trail = check_trail(receipts)
    all_valid = all_valid and (trail is None or trail.complete)
    if out.json_mode:
        doc: dict[str, Any] = {"valid": all_valid, "checkedAt": format_datetime(now),
                               "results": results}
        if trail is not None:
            doc["trail"] = {
                "complete": trail.complete, "sessionId": trail.session_id,
                "rosterHash": trail.roster_hash, "digest": trail.digest,
                "parties": {str(k): v for k, v in trail.parties.items()},
                "receipts": {str(k): v for k, v in trail.present.items()},
                "missing": list(trail.missing), "problems": trail.problems(),
            }
        out.result(doc)
    else:
        for r in results:
            if not r["valid"]:
                out.line(f"{out.bad('INVALID')}  {r['file']}: {r['message']}")
            elif r["kind"] == "credential":
                out.line(_human_vc(out, r["file"], r, when))
            else:
                out.line(
                    f"{out.ok('VALID')}  {r['file']}: presentation by {r['holder']} "
                    f"({r['suite']}, domain {r['domain']!r})"
                )
                for c in r["credentials"]:
                    out.line("  " + _human_vc(out, "contains", c, when))
                for note in r["notes"]:
                    out.line(f"  note: {note}")
        if trail is not None:
            _human_trail(out, trail)
    return 0 if all_valid else 1


def _human_trail(out: Output, trail: TrailReport) -> None:
    """Several run receipts: are they one run's complete audit trail?"""
    run = f"session {trail.session_id}, roster {trail.roster_hash[:16]}..."
    if trail.complete:
        out.line(f"{out.ok('COMPLETE')}  run trail: {run}: all {len(trail.parties)} parties "
                 "signed a receipt, each once")
        return
    out.line(f"{out.bad('INCOMPLETE')}  run trail: {run} ({len(trail.present)} of "
             f"{len(trail.parties)} parties)")
    for problem in trail.problems():
        out.line(f"  {problem}")


def _human_vc(out: Output, label: str, r: dict[str, Any], when: str) -> str:
    kinds = ", ".join(t for t in r["types"] if t != "VerifiableCredential") or "credential"
    window = ""
    if r["validUntil"]:
        window = f", valid until {r['validUntil']}"
    return (
        f"{out.ok('VALID')}  {label}: {kinds} issued by {r['issuer']} "
        f"to {', '.join(r['subjects']) or '(no subject id)'} ({r['suite']}{window}); {when}"
    )
