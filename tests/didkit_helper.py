"""Run didkit calls in a child process (didkit can crash at interpreter exit).

Usage: ``python tests/didkit_helper.py`` with a JSON list of operations on stdin; prints
one JSON list of results, flushes, and leaves with ``os._exit(0)`` so nothing runs at
exit. Each operation is ``{"op": ..., ...}``; a failing operation gives
``{"error": "..."}`` in its place. Used by tests/test_didkit_interop.py and
bench/bench_credentials.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any


async def _run(op: dict[str, Any]) -> Any:
    import didkit

    name = op["op"]
    if name == "version":
        return didkit.get_version()
    if name == "key_to_did":
        return {
            "did": didkit.key_to_did("key", op["key"]),
            "vm": await didkit.key_to_verification_method("key", op["key"]),
        }
    if name == "issue_credential":
        out = await didkit.issue_credential(
            json.dumps(op["credential"]), json.dumps(op["options"]), op["key"]
        )
        return json.loads(out)
    if name == "issue_presentation":
        out = await didkit.issue_presentation(
            json.dumps(op["presentation"]), json.dumps(op["options"]), op["key"]
        )
        return json.loads(out)
    if name == "verify_credential":
        out = await didkit.verify_credential(
            json.dumps(op["credential"]), json.dumps(op["options"])
        )
        return json.loads(out)
    if name == "verify_presentation":
        out = await didkit.verify_presentation(
            json.dumps(op["presentation"]), json.dumps(op["options"])
        )
        return json.loads(out)
    if name == "bench":  # median and p90 (ms) of issuing and verifying one credential
        n = int(op["n"])
        cred, opts, key = json.dumps(op["credential"]), json.dumps(op["options"]), op["key"]
        sign_t, verify_t = [], []
        signed = ""
        for _ in range(n):
            t = time.perf_counter()
            signed = await didkit.issue_credential(cred, opts, key)
            sign_t.append(time.perf_counter() - t)
        vopts = json.dumps({"proofPurpose": "assertionMethod"})
        for _ in range(n):
            t = time.perf_counter()
            result = json.loads(await didkit.verify_credential(signed, vopts))
            verify_t.append(time.perf_counter() - t)
        if result["errors"]:
            return {"error": f"didkit could not verify its own credential: {result['errors']}"}

        def stats(xs: list[float]) -> dict[str, float]:
            xs = sorted(xs)
            return {
                "median": statistics.median(xs) * 1e3,
                "p90": xs[int(0.9 * (len(xs) - 1))] * 1e3,
            }

        return {"sign": stats(sign_t), "verify": stats(verify_t), "bytes": len(signed)}
    return {"error": f"unknown op {name!r}"}


async def _main(ops: list[dict[str, Any]]) -> list[Any]:
    results = []
    for op in ops:
        try:
            results.append(await _run(op))
        except Exception as exc:  # didkit raises its own exception type
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    return results


if __name__ == "__main__":
    request = json.loads(sys.stdin.read())
    try:
        output = asyncio.run(_main(request))
        sys.stdout.write(json.dumps(output))
    except ImportError as exc:
        sys.stdout.write(json.dumps({"unavailable": str(exc)}))
    sys.stdout.flush()
    os._exit(0)
