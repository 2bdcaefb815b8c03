"""The cyclic garbage collector paused while a one-run process starts (specs/mesh.md, 11).

A ``didmesh run`` process (and the runner's child, ``python -m
didmesh.session.mesh.runner``) imports the credential stack, the mesh, ``cryptography``,
MPyC and numpy before the program starts: tens of thousands of objects, nearly all of
them alive until the process ends. With the collector on, those imports trigger some 80
collections that walk the same long-lived objects again and again to find the little
cyclic garbage the imports leave (about 26,000 small objects, ~0.5 MB here): 15-40 ms of
the collector's own CPU per party on this machine, 8-15 ms less CPU for the whole process
(specs/mesh.md, 11). :func:`pause` turns the collector off for the start-up; :func:`resume`
turns it back on, first moving every object alive then (that garbage included) to the
permanent generation (:func:`gc.freeze`), which later collections never scan. Reference
counting frees objects as ever while paused; only cycles made during the start-up are
kept until the process ends.

Who calls what: the command line pauses for ``didmesh run`` only and, whatever happens,
resumes (without freezing) when the command returns, so that an in-process caller (a
test) gets its collector back; the runner's child pauses in its ``main()``. MPyC's
background set-up resumes once its imports (MPyC's, then the receipt's) are over
(:mod:`.mesh.mpyc_setup`), so a long wait for the peers runs with the collector on; the
runner resumes before the program starts in any case (:func:`.mesh.runner._freeze_setup`);
``didmesh run`` resumes before a WireGuard tunnel's set-up and before a refusing party
connects to tell its peers (both wait, and no MPyC import follows at once). Light on
purpose: imported before everything else it helps.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_paused = False


def pause() -> bool:
    """Turn the collector off, unless it is off already (then nothing changes, and
    :func:`resume` will not turn it on). True if this call paused it."""
    global _paused
    with _lock:
        if _paused or not gc.isenabled():
            return False
        gc.disable()
        _paused = True
        return True


def resume(*, freeze: bool = True) -> bool:
    """End a :func:`pause`: with ``freeze``, move every object alive now to the permanent
    generation first, then turn the collector back on. Does nothing (False) when no pause
    is in effect; safe from any thread, and more than once."""
    global _paused
    with _lock:
        if not _paused:
            return False
        _paused = False
        if freeze:
            gc.freeze()
        gc.enable()
        return True


def paused() -> bool:
    """Whether a :func:`pause` is in effect."""
    return _paused
