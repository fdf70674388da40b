import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.config import PROJECT_MANIFEST
from edge.models import (
    ModelChecksumError,
    ModelError,
    ModelFetchError,
    ModelMissingError,
    fetch_models,
    load_manifest,
    resolve_model,
    sha256_of,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def manifest():
    return load_manifest(PROJECT_MANIFEST)


def test_manifest_covers_the_four_mirror_models_with_urls_and_specs(manifest):
    assert set(manifest) == {
        "yolov5-plate-int8",
        "yolo-v9-t-416-dynint8",
        "cct-xs-v1-global",
        "cct-xs-v2-global",
    }
    for spec in manifest.values():
        assert spec.input and spec.output
        for f in spec.files:
            assert f.url.startswith("https://") and len(f.sha256) == 64


def test_fetch_from_mirror_verifies_and_second_fetch_writes_nothing(manifest, models_dir, tmp_path):
    written = fetch_models(
        manifest, tmp_path, mirror=models_dir, names=["cct-xs-v1-global"], progress=lambda s: None
    )
    assert [p.name for p in written] == ["cct_xs_v1_global.onnx", "cct_xs_v1_global_plate_config.yaml"]
    assert resolve_model(manifest["cct-xs-v1-global"], tmp_path) == written
    assert (
        fetch_models(
            manifest, tmp_path, mirror=models_dir, names=["cct-xs-v1-global"], progress=lambda s: None
        )
        == []
    )


def test_corrupt_mirror_file_is_refused_and_nothing_is_installed(manifest, models_dir, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "ocr").mkdir(parents=True)
    for f in manifest["cct-xs-v1-global"].files:
        data = bytearray((models_dir / f.path).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (mirror / f.path).write_bytes(bytes(data))
    dest = tmp_path / "models"
    with pytest.raises(ModelChecksumError, match="does not match the manifest"):
        fetch_models(manifest, dest, mirror=mirror, names=["cct-xs-v1-global"], progress=lambda s: None)
    assert not any(p.is_file() for p in dest.rglob("*"))


def test_mirror_without_the_file_names_it(manifest, tmp_path):
    with pytest.raises(ModelFetchError, match=r"has no detector/yolov5-plate-int8\.tflite"):
        fetch_models(
            manifest, tmp_path / "m", mirror=tmp_path, names=["yolov5-plate-int8"], progress=lambda s: None
        )


def test_missing_model_names_the_file_and_the_fix(manifest, tmp_path):
    with pytest.raises(ModelMissingError) as err:
        resolve_model(manifest["yolov5-plate-int8"], tmp_path)
    assert str(tmp_path / "detector/yolov5-plate-int8.tflite") in str(err.value)
    assert "alpr-edge models fetch" in str(err.value)


def test_altered_model_is_refused_at_start_up(manifest, models_dir, tmp_path):
    spec = manifest["yolov5-plate-int8"]
    target = tmp_path / spec.main_file.path
    target.parent.mkdir(parents=True)
    target.write_bytes((models_dir / spec.main_file.path).read_bytes()[:-10])
    with pytest.raises(ModelChecksumError, match="corrupt or altered"):
        resolve_model(spec, tmp_path)


def test_unknown_model_name_lists_the_known_ones(manifest):
    with pytest.raises(ModelError, match="no model named 'yolov8'"):
        fetch_models(manifest, Path("/nonexistent"), names=["yolov8"], progress=lambda s: None)


def test_online_fetch_downloads_over_http_and_verifies(models_dir, tmp_path):
    """The same command online: a real HTTP server on loopback stands in for the upstream host."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(models_dir))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        text = PROJECT_MANIFEST.read_text()
        manifest_path = tmp_path / "manifest.toml"
        for spec in load_manifest(PROJECT_MANIFEST).values():
            for f in spec.files:
                text = text.replace(f.url, f"{base}/{f.path}")
        manifest_path.write_text(text)
        manifest = load_manifest(manifest_path)
        dest = tmp_path / "models"
        written = fetch_models(manifest, dest, names=["yolov5-plate-int8"], progress=lambda s: None)
        assert sha256_of(written[0]) == manifest["yolov5-plate-int8"].main_file.sha256
        # A URL that answers 404 is a clear fetch error, not a half-written file.
        bad = manifest_path.read_text().replace("ocr/cct_xs_v2_global.onnx", "ocr/missing.onnx")
        manifest_path.write_text(bad)
        with pytest.raises(ModelFetchError, match="download failed"):
            fetch_models(
                load_manifest(manifest_path), dest, names=["cct-xs-v2-global"], progress=lambda s: None
            )
        assert not (dest / "ocr" / "cct_xs_v2_global.onnx").exists()
    finally:
        server.shutdown()
        server.server_close()


def test_cli_models_fetch_uses_the_mirror_env_and_start_up_refuses_missing_models(models_dir, tmp_path):
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'[device]\ndata_dir = "{tmp_path / "data"}"\n')
    env = {"PATH": "/usr/bin:/bin", "ALPR_MODEL_MIRROR": str(models_dir)}
    cmd = [sys.executable, "-m", "edge.cli", "--config", str(cfg)]
    image = str(ROOT.parent / "shared/data/plates/eu/eu1.jpg")
    missing = subprocess.run([*cmd, "read", image], capture_output=True, text=True, env=env, cwd=ROOT)
    assert missing.returncode == 2
    assert "yolov5-plate-int8.tflite" in missing.stderr and "alpr-edge models fetch" in missing.stderr
    fetched = subprocess.run([*cmd, "models", "fetch"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert fetched.returncode == 0, fetched.stderr
    assert "6 file(s) written" in fetched.stdout
    verify = subprocess.run([*cmd, "models", "verify"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert verify.returncode == 0 and verify.stdout.count(" ok") == 6
