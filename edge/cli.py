"""`alpr-edge`: the edge daemon's command line. Each command is a few lines over a library call."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from edge.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config

CONFIG_ENV = "ALPR_CONFIG"


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or os.environ.get(CONFIG_ENV) or None)


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config or os.environ.get(CONFIG_ENV) or None
    config = load_config(path)
    cams = ", ".join(f"{c.id} ({c.source})" for c in config.cameras)
    print(f"{path or 'config.toml'}: ok; cameras: {cams}; database {config.database_path}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from edge.models import fetch_models, load_manifest, mirror_from

    config = _config(args)
    manifest = load_manifest(config.manifest_path)
    mirror = mirror_from(args.mirror, config.models.mirror)
    written = fetch_models(manifest, config.models_dir, mirror=mirror, names=args.names or None)
    print(f"models: {len(written)} file(s) written, all verified in {config.models_dir}")
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from edge.models import load_manifest, resolve_model

    config = _config(args)
    manifest = load_manifest(config.manifest_path)
    for spec in manifest.values():
        for path in resolve_model(spec, config.models_dir):
            print(f"{spec.name}: {path} ok")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    import cv2

    from edge.evaluate import still_frame
    from edge.recognize import FrameRecognizer

    recognizer = FrameRecognizer.from_config(_config(args))
    status = 0
    for i, name in enumerate(args.images):
        image = cv2.imread(name, cv2.IMREAD_COLOR)
        if image is None:
            reason = "no such file" if not Path(name).exists() else "not a readable image"
            print(json.dumps({"image": name, "error": reason}))
            print(f"alpr-edge read: {name}: {reason}", file=sys.stderr)
            status = 1
            continue
        plates = recognizer.recognize(still_frame(image, i))
        out = []
        for p in plates:
            b = p.detection.box
            entry = {
                "box": [round(b.x1), round(b.y1), round(b.x2), round(b.y2)],
                "detection_score": round(p.detection.score, 3),
            }
            if p.text is not None:
                entry.update(
                    plate=p.text.text,
                    confidence=round(p.text.confidence, 3),
                    char_confidences=[round(c, 3) for c in p.text.char_confidences],
                    region=p.text.region,
                    region_confidence=round(p.text.region_confidence, 3)
                    if p.text.region_confidence
                    else None,
                )
            out.append(entry)
        print(json.dumps({"image": name, "plates": out}))
    return status


def cmd_eval(args: argparse.Namespace) -> int:
    from edge.evaluate import evaluate
    from edge.recognize import FrameRecognizer

    recognizer = FrameRecognizer.from_config(_config(args))

    def progress(done: int, total: int) -> None:
        print(f"\reval: {done}/{total} images", end="" if done < total else "\n", file=sys.stderr, flush=True)

    result = evaluate(recognizer, Path(args.dir), progress=progress)
    if not args.misreads:
        result.pop("misreads")
    print(json.dumps(result, indent=2))
    return 0


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum, _frame):
        logging.getLogger("edge").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from edge.app import build_daemon

    daemon = build_daemon(_config(args))
    stop = threading.Event()
    _stop_on_signals(stop)
    summary = daemon.run(stop, stop_when_sources_end=args.exit_at_end)
    daemon.close()
    print(
        json.dumps(
            {
                "frames": summary.frames,
                "reads_stored": summary.reads_stored,
                "frames_dropped": summary.frames_dropped,
                "reads_pending": summary.reads_pending,
            }
        )
    )
    return 0 if summary.reads_pending == 0 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    config = _config(args)
    if not args.verbose:  # the demo prints each read itself; keep the log to warnings
        logging.getLogger().setLevel(logging.WARNING)
    folder = Path(args.out) if args.out else config.data_path(Path("demo"))
    summary = run_demo(config, folder, printer=lambda s: print(s, flush=True))
    return 0 if summary.reads_stored else 1


def cmd_enroll(args: argparse.Namespace) -> int:
    from edge.enroll import enroll

    path = Path(args.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    config = load_config(path)
    done = enroll(
        args.server,
        args.token,
        identity_dir=config.data_path(config.sync.identity_dir),
        config_path=path,
        ca_cert=Path(args.ca_cert) if args.ca_cert else None,
    )
    print(
        f"enrolled as {done.device_id} with {done.server_url}; "
        f"identity in {done.cert_path.parent}; {path} updated"
    )
    return 0


def cmd_officers_hash_pin(args: argparse.Namespace) -> int:
    import getpass

    from edge.officers import BadPinError, hash_pin

    if sys.stdin.isatty():
        pin = getpass.getpass("PIN: ")
        if getpass.getpass("PIN again: ") != pin:
            raise CliError("the two PINs differ")
    else:
        pin = sys.stdin.readline().strip()
    try:
        print(hash_pin(pin))
    except BadPinError as exc:
        raise CliError(str(exc)) from exc
    return 0


def cmd_officers_list(args: argparse.Namespace) -> int:
    import time as _time
    from datetime import UTC, datetime

    from edge.officers import OfficersError, load_officers

    config = _config(args)
    try:
        registry = load_officers(config.officers_path)
    except OfficersError as exc:
        raise CliError(str(exc)) from exc
    today = datetime.fromtimestamp(_time.time(), UTC).date()
    for o in registry.all():
        training = "current" if o.training_current(today) else "LAPSED (cannot log in)"
        print(f"{o.id:<12} {o.name:<30} training until {o.training_valid_until or '-'}: {training}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alpr-edge", description="In-car plate reader daemon and tools.")
    p.add_argument(
        "--config", help=f"device config file (default: ${CONFIG_ENV} or the project's config.toml)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("run", help="run the daemon: cameras -> reads in the database")
    s.add_argument("--exit-at-end", action="store_true", help="stop when every camera's stream has ended")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("enroll", help="enroll this device with the department server (fleet technicians)")
    s.add_argument("--server", required=True, help="department server URL, https://...")
    s.add_argument(
        "--token", required=True, help="one-time enrollment token from `alpr-server devices enroll`"
    )
    s.add_argument("--ca-cert", help="department CA certificate (PEM) to verify the server with")
    s.set_defaults(func=cmd_enroll)

    s = sub.add_parser("check-config", help="validate a config file and print errors by key path")
    s.add_argument("file", nargs="?", help="config file (default: --config, then the project's config.toml)")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("models", help="fetch or verify the model files named in models/manifest.toml")
    msub = s.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    f = msub.add_parser("fetch", help="download (or copy from a mirror) and verify every model")
    f.add_argument("--mirror", help="copy from this folder instead of downloading (or ALPR_MODEL_MIRROR)")
    f.add_argument("names", nargs="*", help="only these models (default: all)")
    f.set_defaults(func=cmd_models_fetch)
    v = msub.add_parser("verify", help="check every model file against its SHA-256")
    v.set_defaults(func=cmd_models_verify)

    s = sub.add_parser("read", help="read plates in image files; prints one JSON object per image")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.set_defaults(func=cmd_read)

    s = sub.add_parser("eval", help="accuracy and latency over an annotated folder; prints JSON")
    s.add_argument("dir", metavar="DIR", help="folder of NAME.jpg + NAME.txt (file x y w h plate)")
    s.add_argument("--misreads", action="store_true", help="list every misread image in the output")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("demo", help="run the daemon on a drive-by video it renders itself")
    s.add_argument("--out", help="folder for the video and database (default: <data_dir>/demo)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("officers", help="the authorized-officer list of the MDT page")
    osub = s.add_subparsers(dest="officers_command", required=True, metavar="ACTION")
    h = osub.add_parser("hash-pin", help="print the scrypt hash of a PIN (asked for, or one line on stdin)")
    h.set_defaults(func=cmd_officers_hash_pin)
    ol = osub.add_parser("list", help="the officers in the configured officers file and their training")
    ol.set_defaults(func=cmd_officers_list)

    from edge.hotlist_cli import register

    register(sub)
    # The hotlist commands take the loaded config (they open its database).
    sub.choices["hotlist"].set_defaults(needs_loaded_config=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from edge.detect import DetectorError
    from edge.enroll import EnrollError
    from edge.evaluate import DatasetError
    from edge.models import ModelError
    from edge.ocr import OcrError

    try:
        if getattr(args, "needs_loaded_config", False):
            args.config = _config(args)
        return args.func(args)
    except (ConfigError, ModelError, DetectorError, OcrError, DatasetError, CliError, EnrollError) as exc:
        print(f"alpr-edge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
