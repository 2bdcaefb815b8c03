"""The one exception tree of didmesh (STYLE.md, point 5).

Every expected failure is a :class:`DidmeshError`. Two axes classify them:

* the **layer** that raised it (identity, relay, session), by subclass;
* **who is at fault**: :class:`LocalError` for misuse on this machine (a wrong
  passphrase, a missing file, a bad flag) and :class:`RemoteError` for input that
  came from someone else and failed a check (a forged credential, a malformed
  envelope). The CLI maps the two to different exit codes.

Each class carries a stable machine-readable ``code`` (used on the wire by the
relay and in ``--json`` output). Messages are written for the person at the
keyboard: they say what went wrong and, where possible, what to do.

The detailed message of a :class:`RemoteError` is for the local user and logs;
what is sent back to a peer is only the class's ``code`` (STYLE.md, point 7).
"""

from __future__ import annotations


class DidmeshError(Exception):
    """Root of every error didmesh raises on purpose."""

    code: str = "error"
    exit_code: int = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.code).strip().splitlines()[0])

    @property
    def message(self) -> str:
        return str(self.args[0])


class LocalError(DidmeshError):
    """Something on this machine needs fixing (configuration, files, usage)."""

    exit_code = 2


class RemoteError(DidmeshError):
    """Input that came from another party, a relay or the network failed a check."""

    exit_code = 1


# --------------------------------------------------------------------------- identity


class IdentityError(DidmeshError):
    """An identity-layer failure."""

    code = "identity_error"


class InvalidDID(IdentityError, RemoteError):
    """The DID is malformed."""

    code = "invalid_did"


class UnsupportedDIDMethod(IdentityError, RemoteError):
    """The DID uses a method this build of didmesh cannot resolve."""

    code = "unsupported_did_method"


class InvalidKey(IdentityError, RemoteError):
    """A key has the wrong type, length or encoding."""

    code = "invalid_key"


class KeystoreError(IdentityError, LocalError):
    """The keystore cannot be used as asked."""

    code = "keystore_error"


class WrongPassphrase(KeystoreError):
    """The passphrase does not open this keystore entry."""

    code = "wrong_passphrase"


class KeystoreCorrupted(KeystoreError):
    """A keystore file is truncated, malformed or was altered."""

    code = "keystore_corrupted"


class InsecurePermissions(KeystoreError):
    """A keystore file can be read by other users."""

    code = "insecure_permissions"


class IdentityExists(KeystoreError):
    """An identity with this name exists already (use --force to replace it)."""

    code = "identity_exists"


class IdentityNotFound(KeystoreError):
    """No identity with this name is in the keystore."""

    code = "identity_not_found"


class PassphraseRequired(KeystoreError):
    """A passphrase is needed but none was given and there is no terminal to ask on."""

    code = "passphrase_required"


class CredentialError(IdentityError, RemoteError):
    """A credential or presentation failed verification."""

    code = "credential_invalid"


class MalformedCredential(CredentialError):
    """The document is not a well-formed credential or presentation."""

    code = "malformed_credential"


class DataModelViolation(MalformedCredential):
    """The document breaks a rule of the VC Data Model (the message names the rule)."""

    code = "data_model_violation"


class DocumentTooLarge(CredentialError):
    """The document exceeds the size accepted before parsing."""

    code = "document_too_large"


class UnknownContext(CredentialError):
    """The document uses a JSON-LD context that is not bundled (contexts are never fetched)."""

    code = "unknown_context"


class UndefinedTerm(CredentialError):
    """The document uses a term its contexts do not define, so it would not be signed."""

    code = "undefined_term"


class UnsupportedProof(CredentialError):
    """The proof type or cryptosuite is not one didmesh accepts."""

    code = "unsupported_proof"


class InvalidProof(CredentialError):
    """The signature does not verify over this document."""

    code = "invalid_proof"


class WrongProofPurpose(CredentialError):
    """The proof was made for another purpose than the one required."""

    code = "wrong_proof_purpose"


class KeyNotAuthorized(CredentialError):
    """The proof's verification method is not controlled by the issuer or holder."""

    code = "key_not_authorized"


class UnexpectedIssuer(CredentialError):
    """The credential was issued by someone other than the issuer the verifier expected."""

    code = "unexpected_issuer"


class NotYetValid(CredentialError):
    """The credential is not valid yet."""

    code = "not_yet_valid"


class Expired(CredentialError):
    """The credential has expired."""

    code = "expired"


class ChallengeMismatch(CredentialError):
    """The presentation's challenge is not the one expected."""

    code = "challenge_mismatch"


class DomainMismatch(CredentialError):
    """The presentation's domain is not the one expected."""

    code = "domain_mismatch"
