"""The party process: ``python -m didmesh.session.mesh.party`` (:func:`~.runner.spawn_party`).

It reads one launch document on stdin (:func:`~.runner.launch_document`), sends its early
punch's SYNs (:mod:`.predial`, specs/mesh.md 6.1) and only then imports the runner (MPyC's
bridge, the relay client, cryptography: 100 ms and more) and runs the party
(:func:`~.runner.run_document`). Until the SYNs are out it imports nothing heavy: the
package's ``__init__`` imports lazily, and :mod:`.predial` needs the standard library and
:mod:`.endpoints` alone.
"""

from __future__ import annotations

import json
import sys

from didmesh.session import gc_pause

from .predial import from_launch


def main() -> int:
    gc_pause.pause()  # this process is one run: no collections while it starts
    raw = sys.stdin.buffer.read(1 << 20)
    try:
        doc = json.loads(raw)
    except ValueError:
        print("didmesh: the launch document on stdin is not JSON", file=sys.stderr, flush=True)
        return 2
    predialed = from_launch(doc)
    from .runner import run_document

    return run_document(doc, predialed=predialed)


if __name__ == "__main__":
    sys.exit(main())
