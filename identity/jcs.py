"""JSON Canonicalization Scheme (RFC 8785), as eddsa-jcs-2022 uses it.

For the common case, where a document holds no floating-point numbers and its keys
hold no characters at or above U+D800 (where UTF-16 and code-point order can differ),
RFC 8785 output equals ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``: integers print as their decimal digits, and Python escapes
exactly what RFC 8785 escapes (``"``, ``\\``, control characters, with the short forms
for \\b \\f \\n \\r \\t and lowercase ``\\u00xx`` otherwise). That path uses the C
encoder; everything else goes through the ``rfc8785`` package. A property test
(tests/test_vc_jcs.py) checks that both agree. Integers beyond 2**53, NaN, lone
surrogates and non-string keys are :class:`MalformedCredential`.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from .errors import MalformedCredential

MAX_SAFE_INTEGER = 2**53 - 1
_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


class _OutOfDomain(Exception):
    def __init__(self, value: int) -> None:
        self.bits = value.bit_length()


def _simple(value: Any) -> bool:
    """True if the fast path gives RFC 8785 output for ``value``; raises _OutOfDomain for
    an integer RFC 8785 cannot represent exactly."""
    stack = [value]
    simple = True
    while stack:
        item = stack.pop()
        if isinstance(item, str) or item is None or isinstance(item, bool):
            continue
        if isinstance(item, dict):
            for key, sub in item.items():
                # sorted by code point only below U+D800 (ASCII keys: O(1) to tell)
                if not isinstance(key, str) or (not key.isascii() and max(key) >= "\ud800"):
                    return False
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise _OutOfDomain(item)
        else:  # float or anything else: the full implementation decides
            simple = False
    return simple


def canonicalize(value: Any, *, what: str = "document") -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``."""
    try:
        if _simple(value):
            return _encoder.encode(value).encode("utf-8")
        return rfc8785.dumps(value)
    except _OutOfDomain as exc:
        raise MalformedCredential(
            f"{what} holds an integer of {exc.bits} bits, beyond +-(2**53 - 1), the integers "
            "RFC 8785 (JCS) represents exactly; send it as a string"
        ) from None
    except rfc8785.CanonicalizationError as exc:
        raise MalformedCredential(
            f"{what} cannot be canonicalized (RFC 8785): {exc!s:.120}"
        ) from None
    except RecursionError:
        raise MalformedCredential(f"{what} is nested too deeply") from None
    except UnicodeEncodeError:
        raise MalformedCredential(f"{what} contains a lone surrogate, which is not JSON") from None
    except (TypeError, ValueError) as exc:
        raise MalformedCredential(f"{what} is not plain JSON: {exc!s:.120}") from None


def canonicalize_reference(value: Any) -> bytes:
    """The ``rfc8785`` package's output, for tests that compare the two paths."""
    return rfc8785.dumps(value)
