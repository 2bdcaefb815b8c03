"""Command-line options of a relay process, importable without aiohttp's server parts
(``didmesh relay serve`` registers them at start-up of every CLI command)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from .config import FIELD_TYPES, RelayConfig, load_config
from .store.url import STORE_HELP

_SKIP_FLAGS = {"host", "port", "store"}


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    defaults = RelayConfig()
    p.add_argument("--host", default=None,
                   help=f"address to listen on (default {defaults.host})")
    p.add_argument("--port", type=int, default=None,
                   help=f"TCP port (default {defaults.port}; 0: any free port)")
    p.add_argument("--store", default=None, help=f"mailbox store: {STORE_HELP}")
    p.add_argument("--config", default=None, help="config file (.toml or .yaml)")
    limits = p.add_argument_group("limits and settings (also DIDMESH_RELAY_<NAME> or config file)")
    for f in fields(RelayConfig):
        if f.name in _SKIP_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = FIELD_TYPES[f.name]
        if typ is bool:
            limits.add_argument(
                flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                help=f"(default {getattr(defaults, f.name)})",
            )
        else:
            limits.add_argument(
                flag, dest=f.name, default=None, metavar=typ.__name__.upper(),
                help=f"(default {getattr(defaults, f.name)!r})",
            )


def config_from_args(args: argparse.Namespace) -> RelayConfig:
    flags = {name: getattr(args, name, None) for name in FIELD_TYPES}
    return load_config(flags=flags, config_file=getattr(args, "config", None))
