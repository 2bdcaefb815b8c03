"""``python -m didmesh.session.lab up|down|exec|status``: an Internet lab for experiments.

    python -m didmesh.session.lab up relay@20 public:p0@5 eim:h1:p1 sym:h2:p2
    python -m didmesh.session.lab status
    python -m didmesh.session.lab exec p1 -- ip route     (options go before the node)
    python -m didmesh.session.lab down

``up`` builds the lab and returns (its forwarders keep running; ``--hold`` instead stays
in the foreground and takes the lab down on Ctrl-C). Its state (namespaces, pids) is kept
in ``$DIDMESH_LAB_DIR`` (default /run/didmesh-lab) under ``--name`` (default ``lab``).
Site syntax: see :mod:`didmesh.session.lab.topology` or specs/lab.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from .lab import FORWARDER, Lab, available, clean_stale, write_state
from .netns import LabError, end_pid, pid_alive
from .topology import DEFAULT, INTERNET


def _state_dir() -> Path:
    return Path(os.environ.get("DIDMESH_LAB_DIR", "/run/didmesh-lab"))


def _load(name: str) -> Lab:
    path = _state_dir() / f"{name}.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab named {name!r} is up (no {path}); start one with "
                       f"python -m didmesh.session.lab up --name {name}") from None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {path}: {exc}") from None
    return Lab.from_state(doc)


def describe(lab: Lab) -> str:
    top = lab.topology
    rows = [("node", "namespace", "address", "seen from the internet as", "site")]
    rows.append((INTERNET, lab.ns(INTERNET), top.address(INTERNET), "-", "router"))
    for site in top.sites:
        link = site.link.render()
        what = f"{site.kind}, link {link} (ms one way/jitter ms/loss %/Mbit/s)"
        if site.is_home:
            rows.append((site.name, lab.ns(site.name), top.address(site.name), "-",
                         f"home router, NAT {what}"))
            for host in site.hosts:
                rows.append((host, lab.ns(host), top.address(host),
                             top.public_address(host), f"party behind {site.name}"))
        else:
            rows.append((site.name, lab.ns(site.name), top.address(site.name),
                         top.public_address(site.name), what))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, [*widths, 0], strict=True)).rstrip()
                     for r in rows)


def _up(args: argparse.Namespace) -> int:
    lab = Lab(args.sites or list(DEFAULT), args.name)
    if args.hold:
        # also when started in the background, where a shell ignores SIGINT for us
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):  # the same way down as Ctrl-C
            signal.signal(sig, signal.default_int_handler)
        try:
            with lab:  # whenever the signal comes, the lab is closed on the way out
                print(describe(lab), flush=True)
                print(f"lab {lab.name} is up; Ctrl-C takes it down", flush=True)
                signal.pause()
        except KeyboardInterrupt:
            pass
        print(f"lab {lab.name} is down", flush=True)
        return 0
    path = _state_dir() / f"{lab.name}.json"
    if path.exists():
        raise LabError(f"lab {lab.name!r} is already up ({path}); take it down first")
    lab.up(persistent=True)
    try:
        write_state(lab, _state_dir())
    except OSError as exc:
        lab.close()
        raise LabError(f"cannot write the lab's state to {path}: {exc}") from None
    print(describe(lab))
    print(f"lab {lab.name} is up; take it down with: python -m didmesh.session.lab down"
          f" --name {lab.name}")
    return 0


def _stray_forwarders(lab: Lab) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and pid_alive(int(p.name), lab.prefix)
            and pid_alive(int(p.name), FORWARDER)]


def _down(args: argparse.Namespace) -> int:
    if args.stale:
        names = clean_stale()
        print(f"took down {len(names)} stale lab(s){': ' + ', '.join(names) if names else ''}")
        return 0
    path = _state_dir() / f"{args.name}.json"
    lab = _load(args.name) if path.exists() else Lab(list(DEFAULT), args.name)
    for pid in _stray_forwarders(lab):  # also those of a lab whose state file was lost
        end_pid(pid, lab.prefix)
    lab.close()
    path.unlink(missing_ok=True)
    left = lab.leftovers()
    if left:
        raise LabError(f"lab {args.name} left behind: {', '.join(left)}")
    print(f"lab {args.name} is down")
    return 0


def _status(args: argparse.Namespace) -> int:
    lab = _load(args.name)
    print(describe(lab))
    doc = lab.state()
    dead = [p for p in doc["pids"] if not pid_alive(p, lab.prefix)]
    print(f"{len(doc['pids']) - len(dead)} of {len(doc['pids'])} link forwarders running"
          + (f" (ended: {', '.join(map(str, dead))})" if dead else ""))
    return 0 if not dead else 1


def _exec(args: argparse.Namespace) -> int:
    lab = _load(args.name)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise LabError("exec needs a command: exec NODE -- COMMAND ...")
    argv = lab.exec(args.node, *cmd)
    os.execvp(argv[0], argv)  # noqa: S606 - the user's own command, in the lab
    return 127  # not reached


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m didmesh.session.lab",
                                description="An Internet lab (NATs, latency) in network "
                                            "namespaces, for experiments. Needs root.")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a lab")
    up.add_argument("sites", nargs="*", help=f"sites (default: {' '.join(DEFAULT)})")
    up.add_argument("--hold", action="store_true",
                    help="stay in the foreground; Ctrl-C takes the lab down")
    down = sub.add_parser("down", help="take a lab down (processes ended, namespaces deleted)")
    down.add_argument("--stale", action="store_true",
                      help="instead, take down the labs of test processes that were killed")
    status = sub.add_parser("status", help="show a lab's nodes and addresses")
    ex = sub.add_parser("exec", help="run a command inside one node")
    ex.add_argument("node")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    for q in (up, down, status, ex):
        q.add_argument("--name", default="lab", help="the lab's name (default: lab)")
    args = p.parse_args(argv)
    try:
        why = available()
        if why is not None:
            raise LabError(f"cannot build a lab here: {why}")
        handler = {"up": _up, "down": _down, "status": _status, "exec": _exec}[args.cmd]
        return handler(args)
    except (LabError, TimeoutError) as exc:
        print(f"didmesh: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("didmesh: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; the work itself is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
