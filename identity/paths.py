"""Where didmesh keeps its files.

The home directory is, in order: an explicit ``--home``, ``$DIDMESH_HOME``, or the
user's config directory (``platformdirs.user_config_dir("didmesh")``, e.g.
``~/.config/didmesh``). It is created with mode 0700.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "DIDMESH_HOME"


def didmesh_home(explicit: str | os.PathLike[str] | None = None, *, create: bool = True) -> Path:
    if explicit:
        home = Path(explicit)
    elif os.environ.get(HOME_ENV):
        home = Path(os.environ[HOME_ENV])
    else:
        import platformdirs  # only when no home is given (~4 ms)

        home = Path(platformdirs.user_config_dir("didmesh"))
    home = home.expanduser()
    if create:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` with mode 0600 (temp file, fsync, rename)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
