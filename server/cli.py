"""`alpr-server`: the department server's command line. Each command is a few lines over a library
call (`server.home.Department` and the modules it opens); `serve` runs the HTTPS API.

Everything lives in one home folder (`--home DIR`, else `$ALPR_SERVER_HOME`, else `./var/server`):
see `server.home`. Exit status: 0 done, 1 refused (bad file, unknown device, ...), 2 not set up
(no CA, no feed key, unusable database).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from sync.protocol import PROTOCOL_VERSION

FORMATS = ("ncic", "clew", "csv", "delta")


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _department(args: argparse.Namespace):
    from server.home import Department, ServerHome

    return Department(ServerHome.from_arg(args.home))


def cmd_version(args: argparse.Namespace) -> int:
    print(f"alpr-server {version('alpr')} (wire protocol v{PROTOCOL_VERSION})")
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from server.app import openapi_document

    text = json.dumps(openapi_document(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_ca_init(args: argparse.Namespace) -> int:
    from server.ca import CertificateAuthority
    from server.home import ServerHome

    home = ServerHome.from_arg(args.home)
    ca = CertificateAuthority.init(home.ca_dir, name=args.name)
    print(f"CA '{args.name}' created: {ca.cert_path} (give this file to devices and browsers)")
    return 0


def cmd_tls_issue(args: argparse.Namespace) -> int:
    with _department(args) as dept:
        cert, key = dept.ca.issue_server_certificate(dept.home.tls_dir, args.host)
    print(f"server certificate for {', '.join(args.host)}: {cert} (key {key})")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    with _department(args) as dept:
        key = dept.feed_keys.generate()
    print(json.dumps({"key_id": key.key_id, "public_key": key.public_key}))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    with _department(args) as dept:
        endorsement = dept.feed_keys.rotate()
    print(endorsement.model_dump_json())
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    with _department(args) as dept:
        for key, created, retired in dept.feed_keys.all_keys():
            state = "retired " + _when(retired) if retired else "current"
            print(f"{key.key_id}  created {_when(created)}  {state}  {key.public_key}")
    return 0


def cmd_devices_enroll(args: argparse.Namespace) -> int:
    with _department(args) as dept:
        dept.ca  # noqa: B018  (a token without a CA could never be used: fail now)
        token = dept.devices.create_token(args.name, ttl_s=args.ttl_hours * 3600)
    print(f"device id: {token.device_id}" + (f" (name {token.name})" if token.name else ""))
    print(f"expires:   {_when(token.expires_at)}")
    print(f"token:     {token.token}")
    print("On the car: alpr-edge enroll --server URL --token TOKEN  (the token works once)")
    return 0


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    from server.devices import UnknownDevice

    with _department(args) as dept:
        try:
            changed = dept.devices.revoke(args.device_id, reason=args.reason)
        except UnknownDevice as exc:
            print(f"alpr-server: {exc}", file=sys.stderr)
            return 1
    print(f"{args.device_id}: " + ("revoked" if changed else "was already revoked"))
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    with _department(args) as dept:
        devices = dept.devices.list()
    if args.json:
        for d in devices:
            print(
                json.dumps(
                    {
                        "device_id": d.device_id,
                        "name": d.name,
                        "hostname": d.hostname,
                        "enrolled_at": d.enrolled_at,
                        "cert_serial": d.cert_serial,
                        "revoked": d.revoked,
                        "revoked_at": d.revoked_at,
                        "last_heartbeat_at": d.last_heartbeat_at,
                        "health": d.health,
                    }
                )
            )
        return 0
    now = time.time()
    for d in devices:
        state = f"REVOKED {_when(d.revoked_at)}" if d.revoked else "active"
        print(
            f"{d.device_id}  {d.name or '-'}  enrolled {_when(d.enrolled_at)}  "
            f"serial {d.cert_serial}  {state}"
        )
        if d.health is None:
            print("    no heartbeat yet")
            continue
        h = d.health
        print(f"    heartbeat {_when(d.last_heartbeat_at)} ({now - (d.last_heartbeat_at or now):.0f} s ago)")
        print(f"    cameras {h.get('cameras')}  fps {h.get('fps')}  gps {h.get('gps')}")
        print(
            f"    hotlist {h.get('hotlist_versions')}  backlog {h.get('backlog')}  "
            f"disk free {h.get('disk_free_bytes')}"
        )
    return 0


def cmd_hotlist_import(args: argparse.Namespace) -> int:
    from edge.hotlist_formats import ListKind
    from server.hotlist import ImportRefused

    kind = ListKind(args.list_kind) if args.list_kind else None
    with _department(args) as dept:
        try:
            result = dept.hotlist.import_file(args.file, args.format, list_kind=kind)
        except ImportRefused as exc:
            print(f"alpr-server: {exc}", file=sys.stderr)
            for error in exc.errors[:50]:
                print(f"  {error}", file=sys.stderr)
            if len(exc.errors) > 50:
                print(f"  ... and {len(exc.errors) - 50} more", file=sys.stderr)
            return 1
    print(
        json.dumps(
            {
                "version": result.version,
                "format": result.format,
                "lists": list(result.lists),
                "records": result.records,
                "added": result.added,
                "changed": result.changed,
                "removed": result.removed,
            }
        )
    )
    return 0


def cmd_hotlist_versions(args: argparse.Namespace) -> int:
    with _department(args) as dept:
        for row in dept.hotlist.versions():
            print(json.dumps(row))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from server.app import create_app
    from server.tls import TLSConfigError, serve, server_ssl_context

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with _department(args) as dept:
        dept.feed_keys.current()  # refuse to start without a feed key: devices could not verify anything
        cert = Path(args.tls_cert) if args.tls_cert else dept.home.tls_dir / "server.crt"
        key = Path(args.tls_key) if args.tls_key else dept.home.tls_dir / "server.key"
        ca = Path(args.ca) if args.ca else dept.ca.cert_path
        try:
            context = server_ssl_context(cert, key, ca)
        except TLSConfigError as exc:
            print(f"alpr-server: {exc} (run `alpr-server tls issue --host NAME`)", file=sys.stderr)
            return 2
        app = create_app(dept, feed_validity_s=args.feed_validity_hours * 3600, test_faults=args.test_faults)
        if args.test_faults:
            logging.getLogger("alpr.server").warning(
                "TEST FAULT HOOK ENABLED: never use --test-faults in production"
            )
        serve(
            app,
            host=args.host,
            port=args.port,
            ssl_context=context,
            ready_file=Path(args.ready_file) if args.ready_file else None,
            log_level=args.log_level,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alpr-server", description="The department ALPR server.")
    p.add_argument("--home", help="server folder (default: $ALPR_SERVER_HOME or ./var/server)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("version", help="print the package and wire-protocol versions")
    s.set_defaults(func=cmd_version)

    s = sub.add_parser("openapi", help="print the wire protocol's OpenAPI document (JSON)")
    s.add_argument("--output", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_openapi)

    ca = sub.add_parser("ca", help="the department certificate authority").add_subparsers(
        dest="ca_command", required=True, metavar="COMMAND"
    )
    s = ca.add_parser("init", help="create the CA key and certificate (never overwrites)")
    s.add_argument("--name", default="ALPR department CA", help="the CA's common name")
    s.set_defaults(func=cmd_ca_init)

    tls = sub.add_parser("tls", help="the server's HTTPS certificate").add_subparsers(
        dest="tls_command", required=True, metavar="COMMAND"
    )
    s = tls.add_parser("issue", help="issue the server certificate from the department CA")
    s.add_argument("--host", action="append", required=True, help="DNS name or IP address (repeatable)")
    s.set_defaults(func=cmd_tls_issue)

    keys = sub.add_parser("keys", help="hotlist feed signing keys (Ed25519)").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    keys.add_parser("generate", help="create the first feed-signing key").set_defaults(func=cmd_keys_generate)
    keys.add_parser("rotate", help="new key, endorsed by the current one").set_defaults(func=cmd_keys_rotate)
    keys.add_parser("list", help="every key, current and retired").set_defaults(func=cmd_keys_list)

    devices = sub.add_parser("devices", help="enrolled devices").add_subparsers(
        dest="devices_command", required=True, metavar="COMMAND"
    )
    s = devices.add_parser("enroll", help="print a one-time enrollment token for a new device")
    s.add_argument("--name", help="a label for the device (e.g. the car number)")
    s.add_argument("--ttl-hours", type=float, default=72.0, help="token lifetime (default 72 h)")
    s.set_defaults(func=cmd_devices_enroll)
    s = devices.add_parser("revoke", help="revoke a device's certificate (acts on its next request)")
    s.add_argument("device_id")
    s.add_argument("--reason", default="", help="recorded with the revocation")
    s.set_defaults(func=cmd_devices_revoke)
    s = devices.add_parser("list", help="devices with their last heartbeat")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=cmd_devices_list)

    hotlist = sub.add_parser("hotlist", help="the department hotlist").add_subparsers(
        dest="hotlist_command", required=True, metavar="COMMAND"
    )
    s = hotlist.add_parser("import", help="import a file as a new feed version")
    s.add_argument("file")
    s.add_argument("--format", required=True, choices=FORMATS)
    s.add_argument("--list-kind", help="list for CLEW tables with other names, or CSV rows without one")
    s.set_defaults(func=cmd_hotlist_import)
    hotlist.add_parser("versions", help="every version with what it changed").set_defaults(
        func=cmd_hotlist_versions
    )

    s = sub.add_parser("serve", help="serve the HTTPS API (mutual TLS for devices)")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8443, help="0 picks a free port (see --ready-file)")
    s.add_argument("--tls-cert", help="server certificate (default: HOME/tls/server.crt)")
    s.add_argument("--tls-key", help="server key (default: HOME/tls/server.key)")
    s.add_argument("--ca", help="CA that issued the client certificates (default: HOME/ca/ca.crt)")
    s.add_argument(
        "--feed-validity-hours", type=float, default=24.0, help="a feed expires this long after issue"
    )
    s.add_argument("--ready-file", help="write {'url', 'pid'} JSON here once listening")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.add_argument("--test-faults", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    from server.ca import CAError
    from server.db import ServerDBError
    from server.feed import FeedKeyError, FeedKeyExists

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FeedKeyExists as exc:
        print(f"alpr-server: {exc}", file=sys.stderr)
        return 1
    except (CAError, ServerDBError, FeedKeyError) as exc:
        print(f"alpr-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
