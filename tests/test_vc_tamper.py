"""Property: changing any single byte of a signed credential never verifies.

The credential is serialized compactly (no insignificant whitespace), so every byte
carries meaning; the changed document must fail with a parse error or another
CredentialError, for both cryptosuites.
"""

from __future__ import annotations

import json

import pytest
from didmesh.identity.credentials import issue_credential, verify_credential
from didmesh.identity.errors import CredentialError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vc_support import CREATED, ISSUER, NOW, v2_credential

SIGNED = {
    suite: json.dumps(
        issue_credential(v2_credential(), ISSUER, suite=suite, created=CREATED),
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    for suite in ("eddsa-rdfc-2022", "eddsa-jcs-2022")
}


@pytest.mark.parametrize("suite", list(SIGNED))
def test_untampered_verifies(suite: str) -> None:
    assert verify_credential(SIGNED[suite], now=NOW).suite == suite


@pytest.mark.parametrize("suite", list(SIGNED))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_byte_change_fails(suite: str, data: st.DataObject) -> None:
    original = SIGNED[suite]
    index = data.draw(st.integers(0, len(original) - 1), label="index")
    # Half the draws use characters that keep the JSON well-formed more often, so the
    # change reaches canonicalization and the signature check rather than the parser.
    candidates = st.integers(0, 255) | st.sampled_from(b"aAzZ0129:-_#.")
    value = data.draw(candidates.filter(lambda b: b != original[index]), label="byte")
    tampered = original[:index] + bytes([value]) + original[index + 1 :]
    with pytest.raises(CredentialError):
        verify_credential(tampered, now=NOW)
