"""A sans-IO Noise Protocol Framework core, shaped like the spec (rev. 34, sections 5 and 9).

:class:`CipherState`, :class:`SymmetricState` and :class:`HandshakeState` follow the
spec's objects one for one. A finished :class:`HandshakeState` is *consumed* by
:meth:`HandshakeState.split` into a :class:`NoiseTransport`; the handshake object has no
encrypt method, so "encrypt before the handshake is complete" cannot be written, and
after ``split()`` the handshake object refuses every call.

Nothing here does I/O or reads the clock. Randomness is only used for ephemeral keys
and can be injected (``ephemeral=``), which the test vectors do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .errors import (
    DecryptFailed,
    HandshakeFailed,
    NoiseUsageError,
    NonceExhausted,
    UnsupportedProtocol,
)
from .patterns import HandshakePattern, parse_pattern
from .primitives import (
    CIPHER_FUNCTIONS,
    DH25519,
    DH_FUNCTIONS,
    HASH_FUNCTIONS,
    KEY_LEN,
    MAX_MESSAGE_LEN,
    MAX_NONCE,
    TAG_LEN,
    CipherFunctions,
    HashFunctions,
    KeyPair,
    lookup,
)

PSK_LEN: Final = 32
#: HKDF input of :attr:`NoiseTransport.exporter` (domain separation from the split keys)
EXPORTER_LABEL: Final = b"didmesh/noise/exporter/v1"


@dataclass(frozen=True)
class NoiseProtocol:
    """A parsed protocol name such as ``Noise_KK_25519_ChaChaPoly_BLAKE2s``."""

    name: str
    pattern: HandshakePattern
    dh: DH25519
    cipher: CipherFunctions
    hash: HashFunctions

    @classmethod
    def from_name(cls, name: str) -> NoiseProtocol:
        parts = name.split("_")
        if len(parts) != 5 or parts[0] != "Noise":
            raise UnsupportedProtocol(
                f"not a Noise protocol name: {name!r} "
                "(expected Noise_<pattern>_<dh>_<cipher>_<hash>)"
            )
        return cls(
            name,
            parse_pattern(parts[1]),
            lookup("DH function", DH_FUNCTIONS, parts[2]),
            lookup("cipher", CIPHER_FUNCTIONS, parts[3]),
            lookup("hash", HASH_FUNCTIONS, parts[4]),
        )


# --------------------------------------------------------------------------- CipherState


class CipherState:
    """A key ``k`` (or none) and a 64-bit nonce ``n`` (section 5.1).

    The nonce value 2**64-1 is reserved; reaching it raises :class:`NonceExhausted`.
    A failed decryption raises :class:`DecryptFailed` and leaves ``n`` unchanged.
    """

    __slots__ = ("_cipher", "_k", "_aead", "_pack", "n")

    def __init__(self, cipher: CipherFunctions, k: bytes | None = None) -> None:
        self._cipher = cipher
        self._pack = cipher.nonce
        self.n = 0
        self._k: bytes | None = None
        self._aead: Any = None
        self.initialize_key(k)

    def initialize_key(self, k: bytes | None) -> None:
        if k is not None and len(k) != KEY_LEN:
            raise NoiseUsageError(f"a Noise cipher key is {KEY_LEN} bytes, got {len(k)}")
        self._k = k
        self._aead = None if k is None else self._cipher.aead(k)
        self.n = 0

    def has_key(self) -> bool:
        return self._k is not None

    def set_nonce(self, n: int) -> None:
        if not 0 <= n <= MAX_NONCE:
            raise NoiseUsageError(f"a Noise nonce is a 64-bit unsigned integer, got {n}")
        self.n = n

    def _next_nonce(self) -> bytes:
        n = self.n
        if n >= MAX_NONCE:
            raise NonceExhausted(
                "this cipher's 64-bit nonce is used up (2**64-1 is reserved); open a new channel"
            )
        self.n = n + 1
        return self._pack(n)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return bytes(plaintext)
        nonce = self._next_nonce()
        return bytes(self._aead.encrypt(nonce, plaintext, ad))

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return bytes(ciphertext)
        if self.n >= MAX_NONCE:
            raise NonceExhausted("this cipher's 64-bit nonce is used up; open a new channel")
        try:
            pt = self._aead.decrypt(self._pack(self.n), ciphertext, ad)
        except Exception as exc:  # cryptography raises InvalidTag (and ValueError on size)
            raise DecryptFailed(
                "a Noise message did not authenticate (altered, replayed, reordered, "
                "or encrypted under another key)"
            ) from exc
        self.n += 1
        return bytes(pt)

    # Fast paths for framing: empty associated data, caller-provided buffers.

    def encrypt_into(self, plaintext: Any, out: Any) -> None:
        """Encrypt ``plaintext`` into ``out`` (exactly ``len(plaintext) + 16`` bytes), ad empty."""
        if self._aead is None:
            raise NoiseUsageError("transport encryption needs a keyed CipherState")
        self._aead.encrypt_into(self._next_nonce(), plaintext, None, out)

    def decrypt_into(self, ciphertext: Any, out: Any) -> None:
        """Decrypt ``ciphertext`` into ``out`` (``len(ciphertext) - 16`` bytes), ad empty."""
        if self._aead is None:
            raise NoiseUsageError("transport decryption needs a keyed CipherState")
        if self.n >= MAX_NONCE:
            raise NonceExhausted("this cipher's 64-bit nonce is used up; open a new channel")
        try:
            self._aead.decrypt_into(self._pack(self.n), ciphertext, None, out)
        except Exception as exc:
            raise DecryptFailed("a Noise transport message did not authenticate") from exc
        self.n += 1

    def rekey(self) -> None:
        """REKEY (section 4.2, 11.3): k = REKEY(k); the nonce is unchanged."""
        if self._k is None:
            raise NoiseUsageError("cannot rekey a CipherState without a key")
        n = self.n
        self.initialize_key(self._cipher.rekey(self._k))
        self.n = n


# --------------------------------------------------------------------------- SymmetricState


class SymmetricState:
    """Chaining key ``ck``, handshake hash ``h`` and a CipherState (section 5.2)."""

    def __init__(self, protocol: NoiseProtocol) -> None:
        self._hash = protocol.hash
        self._cipher = protocol.cipher
        name = protocol.name.encode("ascii")
        hashlen = self._hash.hashlen
        self.h = name.ljust(hashlen, b"\x00") if len(name) <= hashlen else self._hash.hash(name)
        self.ck = self.h
        self.cipher_state = CipherState(self._cipher)

    def _truncate(self, k: bytes) -> bytes:
        return k[:KEY_LEN]

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = self._hash.hkdf(self.ck, ikm, 2)
        self.cipher_state.initialize_key(self._truncate(temp_k))

    def mix_hash(self, data: bytes) -> None:
        self.h = self._hash.hash(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = self._hash.hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher_state.initialize_key(self._truncate(temp_k))

    def get_handshake_hash(self) -> bytes:
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cipher_state.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cipher_state.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def export(self, label: bytes) -> bytes:
        """A secret for ``label``, derived from the chaining key (not from ``h``, which is
        public): ``HKDF(ck, label)``'s first output. Independent of :meth:`split`'s keys
        (their HKDF input is empty)."""
        if not label:
            raise NoiseUsageError("an exporter label must not be empty")
        return self._hash.hkdf(self.ck, label, 2)[0]

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = self._hash.hkdf(self.ck, b"", 2)
        return (
            CipherState(self._cipher, self._truncate(k1)),
            CipherState(self._cipher, self._truncate(k2)),
        )


# --------------------------------------------------------------------------- transport


class NoiseTransport:
    """The transport phase: what a completed handshake becomes (section 5.3, Split()).

    ``send`` / ``recv`` are this side's CipherStates. For one-way patterns (N, K, X)
    the responder has no ``send`` cipher and the initiator no ``recv`` cipher.
    """

    def __init__(
        self,
        send: CipherState | None,
        recv: CipherState | None,
        handshake_hash: bytes,
        remote_static: bytes | None,
        initiator: bool,
        exporter: bytes = b"",
    ) -> None:
        self.send = send
        self.recv = recv
        #: Channel binding value h (section 11.2); identical on both sides.
        self.handshake_hash = handshake_hash
        #: The peer's static public key, if the pattern transmitted or pre-shared one.
        self.remote_static = remote_static
        self.initiator = initiator
        #: A secret both sides share, bound to this handshake (``HKDF(ck, EXPORTER_LABEL)``):
        #: keys for messages outside the transport ciphers (link resumption, specs/mesh.md).
        self.exporter = exporter

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        if self.send is None:
            raise NoiseUsageError("a one-way Noise pattern's responder cannot send")
        if len(plaintext) + TAG_LEN > MAX_MESSAGE_LEN:
            raise NoiseUsageError(
                f"a Noise transport plaintext is at most {MAX_MESSAGE_LEN - TAG_LEN} bytes; "
                "use didmesh.session.mesh.framing for larger messages"
            )
        return self.send.encrypt_with_ad(ad, plaintext)

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        if self.recv is None:
            raise NoiseUsageError("a one-way Noise pattern's initiator cannot receive")
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise DecryptFailed(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
        return self.recv.decrypt_with_ad(ad, ciphertext)


# --------------------------------------------------------------------------- HandshakeState


class HandshakeState:
    """One side of a Noise handshake (section 5.3).

    ``write_message(payload) -> bytes`` and ``read_message(message) -> payload`` take
    turns as the pattern says. When :attr:`complete`, :meth:`split` hands back the
    :class:`NoiseTransport` and this object is spent. Any failure aborts the handshake:
    later calls raise :class:`NoiseUsageError`.
    """

    def __init__(
        self,
        protocol: NoiseProtocol | str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        s: KeyPair | bytes | None = None,
        e: KeyPair | bytes | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        psks: Sequence[bytes] = (),
    ) -> None:
        if isinstance(protocol, str):
            protocol = NoiseProtocol.from_name(protocol)
        self.protocol = protocol
        self.initiator = initiator
        dh = protocol.dh
        self._dh = dh
        self.s = dh.keypair(s) if isinstance(s, bytes) else s
        self.e = dh.keypair(e) if isinstance(e, bytes) else e
        for label, key in (("rs", rs), ("re", re)):
            if key is not None and len(key) != dh.dhlen:
                raise NoiseUsageError(f"{label}: a {dh.name} public key is {dh.dhlen} bytes")
        self.rs = rs
        self.re = re
        pattern = protocol.pattern
        if len(psks) != pattern.psk_count:
            raise NoiseUsageError(
                f"{protocol.name} needs {pattern.psk_count} pre-shared key(s), got {len(psks)}"
            )
        if any(len(p) != PSK_LEN for p in psks):
            raise NoiseUsageError(f"a Noise pre-shared key is {PSK_LEN} bytes")
        self._psks = list(psks)
        self._has_psk = pattern.has_psk
        self._messages = pattern.messages
        self._index = 0
        self._state = "handshake"  # -> "complete" -> "split"; or "failed"

        self.symmetric = SymmetricState(protocol)
        self.symmetric.mix_hash(prologue)
        # Pre-messages: the initiator's keys first, then the responder's (section 7.1).
        for pre, mine in (
            (pattern.initiator_pre, initiator),
            (pattern.responder_pre, not initiator),
        ):
            for op in pre:
                key = self._pre_key(op, mine)
                self.symmetric.mix_hash(key)

    def _pre_key(self, op: str, mine: bool) -> bytes:
        pair = self.s if op == "s" else self.e
        remote = self.rs if op == "s" else self.re
        key = pair.public if (mine and pair is not None) else (None if mine else remote)
        if key is None:
            who = "local" if mine else "remote"
            raise NoiseUsageError(
                f"{self.protocol.name}: the pattern needs the {who} {op!r} key before "
                "the handshake starts"
            )
        return key

    # ------------------------------------------------------------------ state queries

    @property
    def complete(self) -> bool:
        """True when every handshake message has been written or read."""
        return self._state == "complete"

    @property
    def is_my_turn(self) -> bool:
        """True if the next step is :meth:`write_message` (False: :meth:`read_message`)."""
        return self._state == "handshake" and (self._index % 2 == 0) == self.initiator

    def get_handshake_hash(self) -> bytes:
        return self.symmetric.get_handshake_hash()

    def _check_turn(self, writing: bool) -> None:
        if self._state != "handshake":
            what = {
                "complete": "is complete; call split()",
                "split": "was already split into a transport",
                "failed": "failed earlier; start a new one",
            }[self._state]
            raise NoiseUsageError(f"this Noise handshake {what}")
        if self.is_my_turn != writing:
            verb = "read" if writing else "write"
            raise NoiseUsageError(
                f"out of turn: message {self._index} of {self.protocol.name} is for this "
                f"side to {verb}"
            )

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self._messages):
            self._state = "complete"

    def _dh_op(self, op: str) -> bytes:
        # es: initiator's e with responder's s; se: initiator's s with responder's e.
        if op == "ee":
            local, remote = self.e, self.re
        elif op == "ss":
            local, remote = self.s, self.rs
        elif (op == "es") == self.initiator:
            local, remote = self.e, self.rs
        else:
            local, remote = self.s, self.re
        if local is None or remote is None:
            raise NoiseUsageError(f"{self.protocol.name}: token {op!r} needs a missing key")
        return self._dh.dh(local, remote)

    # ------------------------------------------------------------------ the two steps

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage(payload): the next handshake message to send to the peer."""
        self._check_turn(writing=True)
        try:
            out = self._write(payload)
        except BaseException:
            self._state = "failed"
            raise
        self._advance()
        return out

    def _write(self, payload: bytes) -> bytes:
        sym = self.symmetric
        buf: list[bytes] = []
        for op in self._messages[self._index]:
            if op == "e":
                if self.e is None:
                    self.e = self._dh.generate_keypair()
                buf.append(self.e.public)
                sym.mix_hash(self.e.public)
                if self._has_psk:
                    sym.mix_key(self.e.public)
            elif op == "s":
                if self.s is None:
                    raise NoiseUsageError(f"{self.protocol.name}: a local static key is needed")
                buf.append(sym.encrypt_and_hash(self.s.public))
            elif op == "psk":
                sym.mix_key_and_hash(self._psks.pop(0))
            else:
                sym.mix_key(self._dh_op(op))
        buf.append(sym.encrypt_and_hash(payload))
        out = b"".join(buf)
        if len(out) > MAX_MESSAGE_LEN:
            raise NoiseUsageError(
                f"handshake message would be {len(out)} bytes; Noise allows {MAX_MESSAGE_LEN}"
            )
        return out

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage(message): process the peer's handshake message, return its payload.

        Raises :class:`HandshakeFailed` if the message is malformed or does not
        authenticate; the handshake is then dead.
        """
        self._check_turn(writing=False)
        try:
            payload = self._read(bytes(message))
        except BaseException:
            self._state = "failed"
            raise
        self._advance()
        return payload

    def _read(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE_LEN:
            raise HandshakeFailed(
                f"handshake message of {len(message)} bytes exceeds Noise's {MAX_MESSAGE_LEN}",
                reason="malformed",
            )
        sym = self.symmetric
        dhlen = self._dh.dhlen
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if len(message) - pos < n:
                raise HandshakeFailed(
                    f"handshake message {self._index} is truncated ({len(message)} bytes)",
                    reason="malformed",
                )
            chunk = message[pos : pos + n]
            pos += n
            return chunk

        try:
            for op in self._messages[self._index]:
                if op == "e":
                    self.re = take(dhlen)
                    sym.mix_hash(self.re)
                    if self._has_psk:
                        sym.mix_key(self.re)
                elif op == "s":
                    n = dhlen + TAG_LEN if sym.cipher_state.has_key() else dhlen
                    self.rs = sym.decrypt_and_hash(take(n))
                elif op == "psk":
                    sym.mix_key_and_hash(self._psks.pop(0))
                else:
                    sym.mix_key(self._dh_op(op))
            rest = message[pos:]
            if sym.cipher_state.has_key() and len(rest) < TAG_LEN:
                take(TAG_LEN)  # raises "truncated"
            return sym.decrypt_and_hash(rest)
        except DecryptFailed as exc:
            raise HandshakeFailed(HandshakeFailed.MISMATCH, reason="mismatch") from exc

    # ------------------------------------------------------------------ into transport

    def split(self) -> NoiseTransport:
        """Consume the completed handshake into its :class:`NoiseTransport`."""
        if self._state != "complete":
            raise NoiseUsageError(
                {
                    "handshake": "the Noise handshake is not complete",
                    "split": "this Noise handshake was already split into a transport",
                    "failed": "this Noise handshake failed earlier; start a new one",
                }[self._state]
            )
        c1, c2 = self.symmetric.split()
        exporter = self.symmetric.export(EXPORTER_LABEL)
        self._state = "split"
        h = self.symmetric.get_handshake_hash()
        # Drop key material this object no longer needs.
        self.e = None
        self.s = None
        if self.protocol.pattern.one_way:
            send, recv = (c1, None) if self.initiator else (None, c1)
        else:
            send, recv = (c1, c2) if self.initiator else (c2, c1)
        return NoiseTransport(send, recv, h, self.rs, self.initiator, exporter)
