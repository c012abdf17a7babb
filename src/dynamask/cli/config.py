"""``dynamask config``: print the resolved config as YAML, every key with its description."""

from __future__ import annotations

import argparse

from .exit_status import EXIT_OK


def add_config(sub, common) -> None:
    p = sub.add_parser(
        "config",
        parents=[common],
        help="print the resolved config, every key documented",
        description="Print the config that train would use (defaults <- --config FILE <- KEY=VALUE "
        "overrides) as YAML, each key followed by its one-line description. A bad key or "
        "value is a one-line error.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: the defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    from ..config import config_to_documented_yaml, load_config

    print(config_to_documented_yaml(load_config(args.config, args.overrides)), end="")
    return EXIT_OK
