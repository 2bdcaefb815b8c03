"""``didmesh run --transport wireguard`` without what it needs fails before touching
anything, in one ``didmesh:`` line naming what is missing and how to get it
(session/wireguard/preflight.py): a dropped CAP_NET_ADMIN (``setpriv``), an unprivileged
user namespace (``unshare -U -r``), and a missing ``wireguard-go`` (data-driven ``which``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from didmesh.session.wireguard import preflight
from didmesh.session.wireguard.tunnel import STATE_DIR, run_interface
from wg_helpers import invitee_home

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "secure_sum.py"


def _which_without(*gone: str) -> object:
    return lambda tool: None if tool in gone else f"/usr/bin/{tool}"


@pytest.mark.parametrize(("gone", "phrase"), [
    (("wireguard-go",), "the wireguard-go program (install it: sudo apt-get install wireguard-go)"),
    (("wg",), "the wg program (install it: sudo apt-get install wireguard-tools)"),
    (("ip", "wg"), "the ip program (install it: sudo apt-get install iproute2)"),
])
def test_missing_programs_are_named_with_how_to_get_them(gone: tuple[str, ...],
                                                         phrase: str) -> None:
    # the kernel's WireGuard absent (as here): wireguard-go is needed
    gaps = preflight.missing(which=_which_without(*gone),
                             probe=lambda: "Error: Unknown device type.")
    assert phrase in gaps
    assert len([g for g in gaps if "program" in g]) == len(gone)


def test_nothing_missing_as_root_here() -> None:
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.skip("needs root and /dev/net/tun")
    assert preflight.missing(which=_which_without(), probe=lambda: None) == []


UNPRIVILEGED = {
    "setpriv": ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"],
    "unshare": ["unshare", "--user", "--map-root-user"],
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    return invitee_home(tmp_path_factory.mktemp("wgpre"), EXAMPLE)


@pytest.mark.parametrize("how", sorted(UNPRIVILEGED))
def test_unprivileged_run_fails_early_in_one_line(how: str, home: tuple[Path, str, Path]
                                                  ) -> None:
    if os.geteuid() != 0:
        pytest.skip("drops a capability root has")
    prefix = UNPRIVILEGED[how]
    if shutil.which(prefix[0]) is None:
        pytest.skip(f"{prefix[0]} is not installed")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:  # e.g. user namespaces disabled in a container
        pytest.skip(f"{' '.join(prefix)} does not work here: {probe.stderr.strip()[-200:]}")
    path, sid, program = home
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(path)
    res = subprocess.run(
        [*prefix, sys.executable, "-m", "didmesh.session.cli.main", "run", sid[:8],
         "--transport", "wireguard", "--", str(program)],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("didmesh: --transport wireguard cannot run here; missing: "
                               "the CAP_NET_ADMIN capability"), lines
    assert "sudo" in lines[0] and "default transport" in lines[0]
    name = run_interface(sid, 1)
    assert not Path("/sys/class/net", name).exists()
    assert not (STATE_DIR / f"{name}.json").exists()
