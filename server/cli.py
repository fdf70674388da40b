"""`alpr-server`: the department server's command line. The server (ingest, hotlist feed,
enrollment, policy) is built in later issues; today it reports its version and protocol."""

from __future__ import annotations

import argparse
from importlib.metadata import version

PROTOCOL_VERSION = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alpr-server", description="The department ALPR server.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("version", help="print the package and wire-protocol versions")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"alpr-server {version('alpr')} (wire protocol v{PROTOCOL_VERSION})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
