"""`alpr-sync`: the sync agent's command line. The agent itself (upload, hotlist pull) is issue 5;
what exists today is the view of what is waiting to be uploaded."""

from __future__ import annotations

import argparse
import json
import os
import sys

from edge.config import ConfigError, load_config


def cmd_backlog(args: argparse.Namespace) -> int:
    from edge.store import Store, StoreError

    config = load_config(args.config or os.environ.get("ALPR_CONFIG") or None)
    try:
        with Store(config.database_path) as store:
            counts = store.outbox_counts()
    except StoreError as exc:
        print(f"alpr-sync: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({lane.name.lower(): n for lane, n in counts.items()}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alpr-sync", description="Uploads the outbox to the department.")
    p.add_argument("--config", help="device config file (default: $ALPR_CONFIG or the project's config.toml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("backlog", help="records waiting for upload, per lane, as JSON")
    s.set_defaults(func=cmd_backlog)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"alpr-sync: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
