"""JSON Canonicalization Scheme (RFC 8785), as eddsa-jcs-2022 uses it.

A thin wrapper over the ``rfc8785`` package that turns its domain errors (integers
beyond 2**53, NaN, non-string keys) into :class:`MalformedCredential`.
"""

from __future__ import annotations

from typing import Any

import rfc8785

from .errors import MalformedCredential


def canonicalize(value: Any, *, what: str = "document") -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise MalformedCredential(f"{what} cannot be canonicalized (RFC 8785): {exc}") from None
    except RecursionError:
        raise MalformedCredential(f"{what} is nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise MalformedCredential(f"{what} is not plain JSON: {exc}") from None
