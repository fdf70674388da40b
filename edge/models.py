"""Model files: the manifest, fetching (download or mirror copy) and verification.

Guarantees: a model file in the models folder is either absent or has exactly the SHA-256 the
manifest pins. Fetching writes to a temporary file in the same folder, verifies it, fsyncs it,
renames it into place and fsyncs the folder, so a power cut leaves the old file or the new one,
never half of one. Start-up (`resolve_model`) refuses a missing or altered file with a message
naming the file and the command that fixes it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MIRROR_ENV = "ALPR_MODEL_MIRROR"


class ModelError(Exception):
    """A model is unknown, missing, corrupt, or could not be fetched."""


class ModelMissingError(ModelError):
    pass


class ModelChecksumError(ModelError):
    pass


class ModelFetchError(ModelError):
    pass


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the models folder (and to a mirror)
    url: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    kind: Literal["detector", "ocr"]
    format: Literal["tflite", "onnx"]
    licence: str
    input: str
    output: str
    files: tuple[ModelFile, ...]

    @property
    def main_file(self) -> ModelFile:
        """The weights file (the first one listed)."""
        return self.files[0]


def load_manifest(path: Path) -> dict[str, ModelSpec]:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model manifest: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"{path}: not valid TOML: {exc}") from exc
    specs: dict[str, ModelSpec] = {}
    for name, entry in data.get("models", {}).items():
        where = f"{path}: models.{name}"
        try:
            files = tuple(
                ModelFile(path=f["path"], url=f.get("url", ""), sha256=f["sha256"].lower())
                for f in entry["files"]
            )
            spec = ModelSpec(
                name=name,
                kind=entry["kind"],
                format=entry["format"],
                licence=entry.get("licence", ""),
                input=entry["input"],
                output=entry["output"],
                files=files,
            )
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{where}: missing or malformed key {exc}") from exc
        if spec.kind not in ("detector", "ocr") or spec.format not in ("tflite", "onnx") or not files:
            raise ModelError(f"{where}: kind must be detector|ocr, format tflite|onnx, and files non-empty")
        for f in files:
            if len(f.sha256) != 64 or Path(f.path).is_absolute() or ".." in Path(f.path).parts:
                raise ModelError(f"{where}: file {f.path!r} needs a relative path and a 64-hex sha256")
        specs[name] = spec
    return specs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fix_hint(mirror_hint: bool = True) -> str:
    hint = "run `alpr-edge models fetch`"
    if mirror_hint:
        hint += f" (offline: `alpr-edge models fetch --mirror DIR` or set {MIRROR_ENV})"
    return hint


def resolve_model(spec: ModelSpec, models_dir: Path) -> list[Path]:
    """The paths of a model's files, each checked against its pinned SHA-256."""
    paths = []
    for f in spec.files:
        p = models_dir / f.path
        if not p.is_file():
            raise ModelMissingError(f"model file {p} ({spec.name}) is missing: {_fix_hint()}")
        actual = sha256_of(p)
        if actual != f.sha256:
            raise ModelChecksumError(
                f"model file {p} ({spec.name}) is corrupt or altered: sha256 {actual}, "
                f"manifest pins {f.sha256}; delete it and {_fix_hint()}"
            )
        paths.append(p)
    return paths


def lookup(manifest: dict[str, ModelSpec], name: str, kind: str, manifest_path: Path) -> ModelSpec:
    spec = manifest.get(name)
    if spec is None:
        known = ", ".join(sorted(n for n, s in manifest.items() if s.kind == kind))
        raise ModelError(f"{manifest_path}: no model named {name!r} (known {kind} models: {known})")
    if spec.kind != kind:
        raise ModelError(f"{manifest_path}: model {name!r} is a {spec.kind}, not a {kind}")
    return spec


def _install(tmp: Path, dest: Path, expected: str, origin: str) -> None:
    actual = sha256_of(tmp)
    if actual != expected:
        tmp.unlink(missing_ok=True)
        raise ModelChecksumError(
            f"{origin}: sha256 {actual} does not match the manifest's {expected}; refused"
        )
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _copy_from_mirror(src: Path, tmp: Path) -> None:
    with src.open("rb") as fin, tmp.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _download(url: str, tmp: Path, progress: Callable[[str], None]) -> None:
    import httpx  # only needed online

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length") or 0)
            done = 0
            with tmp.open("wb") as fh:
                for chunk in resp.iter_bytes(1 << 16):
                    fh.write(chunk)
                    done += len(chunk)
                    if total:
                        progress(f"\r  {done * 100 // total:3d}% of {total / 1e6:.1f} MB")
            progress("\n")
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelFetchError(f"{url}: download failed: {exc}") from exc


def fetch_models(
    manifest: dict[str, ModelSpec],
    models_dir: Path,
    *,
    mirror: Path | None = None,
    names: list[str] | None = None,
    progress: Callable[[str], None] = lambda s: print(s, end="", file=sys.stderr, flush=True),
) -> list[Path]:
    """Make every named model (default: all) present and verified in `models_dir`.

    Files already present with the right checksum are kept. With a mirror the file is copied
    from `mirror / path`; otherwise it is downloaded from its URL. Returns the files written.
    """
    written: list[Path] = []
    selected = names if names else sorted(manifest)
    for name in selected:
        if name not in manifest:
            raise ModelError(
                f"no model named {name!r} in the manifest (known: {', '.join(sorted(manifest))})"
            )
        for f in manifest[name].files:
            dest = models_dir / f.path
            if dest.is_file() and sha256_of(dest) == f.sha256:
                progress(f"{name}: {f.path} ok\n")
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".fetch-", dir=dest.parent)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                if mirror is not None:
                    src = mirror / f.path
                    if not src.is_file():
                        raise ModelFetchError(f"mirror {mirror} has no {f.path} (needed by {name})")
                    progress(f"{name}: copying {f.path} from {mirror}\n")
                    _copy_from_mirror(src, tmp)
                    origin = str(src)
                else:
                    if not f.url:
                        raise ModelFetchError(f"{name}: {f.path} has no URL; use --mirror DIR")
                    progress(f"{name}: downloading {f.url}\n")
                    _download(f.url, tmp, progress)
                    origin = f.url
                _install(tmp, dest, f.sha256, origin)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(dest)
    return written


def mirror_from(option: str | None, configured: str = "") -> Path | None:
    """The mirror to use: the command-line option, else ALPR_MODEL_MIRROR, else the config."""
    value = option or os.environ.get(MIRROR_ENV) or configured
    return Path(value) if value else None
