"""`alpr-sync`: the sync agent's command line. Each command is a few lines over a library call.

- `run`: the agent (uploads, hotlist pull, heartbeats) until SIGTERM/SIGINT.
- `backlog`: records waiting for upload, per lane, as JSON.
- `status`: backlog, set-aside entries, the last hotlist feed applied or refused, image budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from edge.config import ConfigError, load_config


def _config(args: argparse.Namespace):
    return load_config(args.config or os.environ.get("ALPR_CONFIG") or None)


def cmd_backlog(args: argparse.Namespace) -> int:
    from edge.store import Store, StoreError

    config = _config(args)
    try:
        with Store(config.database_path) as store:
            counts = store.outbox_counts()
    except StoreError as exc:
        print(f"alpr-sync: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({lane.name.lower(): n for lane, n in counts.items()}))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from edge.store import Store, StoreError
    from sync.state import KEY_FEED_OK, KEY_FEED_REFUSED, KEY_IMAGE_BUDGET, SyncState, SyncStateError, connect

    config = _config(args)
    try:
        with Store(config.database_path) as store:
            counts = store.outbox_counts()
        conn = connect(config.database_path)
        try:
            state = SyncState(conn)
            out = {
                "device_id": config.device.id,
                "server_url": config.sync.server_url,
                "backlog": {lane.name.lower(): n for lane, n in counts.items()},
                "set_aside": state.set_aside_count(),
                "feed_ok": state.get(KEY_FEED_OK),
                "feed_refused": state.get(KEY_FEED_REFUSED),
                "image_budget": state.get(KEY_IMAGE_BUDGET),
            }
        finally:
            conn.close()
    except (StoreError, SyncStateError) as exc:
        print(f"alpr-sync: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from sync.agent import AgentRuntime, AgentSetupError

    config = _config(args)
    stop = threading.Event()

    def handler(signum, _frame):
        logging.getLogger("sync").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        runtime = AgentRuntime(config)
    except AgentSetupError as exc:
        print(f"alpr-sync: {exc}", file=sys.stderr)
        return 2
    with runtime:
        stats = runtime.agent.run(stop, until_drained=args.until_drained)
    print(
        json.dumps(
            {
                "records_acked": stats.records_acked,
                "duplicates_acked": stats.duplicates_acked,
                "images_acked": stats.images_acked,
                "set_aside": stats.records_set_aside,
                "failures": stats.failures,
            }
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alpr-sync", description="Uploads the outbox to the department.")
    p.add_argument("--config", help="device config file (default: $ALPR_CONFIG or the project's config.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("run", help="run the agent: uploads, hotlist pull, heartbeats (until SIGTERM)")
    s.add_argument(
        "--until-drained", action="store_true", help="exit once hits and reads are all acknowledged"
    )
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("backlog", help="records waiting for upload, per lane, as JSON")
    s.set_defaults(func=cmd_backlog)
    s = sub.add_parser(
        "status", help="backlog, set-aside entries, last hotlist feed applied or refused, as JSON"
    )
    s.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"alpr-sync: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
