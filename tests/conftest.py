"""Fixtures shared by the test modules: real models (from the mirror), real photographs, configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.config import Config, load_config, parse_config
from edge.models import fetch_models, load_manifest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
PLATES = SHARED / "data" / "plates"


def _mirror() -> Path:
    env = os.environ.get("ALPR_MODEL_MIRROR")
    mirror = Path(env) if env else SHARED / "models"
    if not mirror.is_dir():
        pytest.fail(f"no model mirror: set ALPR_MODEL_MIRROR (looked for {mirror}); run `make models` first")
    return mirror


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every model in the manifest, copied from the mirror and verified, in a session folder."""
    base = load_config()
    folder = tmp_path_factory.mktemp("models")
    fetch_models(load_manifest(base.manifest_path), folder, mirror=_mirror(), progress=lambda s: None)
    return folder


@pytest.fixture(scope="session")
def plates_dir() -> Path:
    if not (PLATES / "eu").is_dir():
        pytest.fail(f"the evaluation photographs are missing: expected {PLATES} (../shared beside the clone)")
    return PLATES


@pytest.fixture
def make_config(tmp_path: Path, models_dir: Path):
    """A Config like the shipped one, with data in tmp_path and models from the session folder."""

    def build(**sections) -> Config:
        base = load_config().model_dump(mode="json", exclude={"base_dir"})
        base["device"]["data_dir"] = str(tmp_path / "data")
        base["models"]["dir"] = str(models_dir)
        base["gps"]["source"] = "none"
        if "mdt" in base:  # any free port: tests run side by side and 8080 may be taken
            base["mdt"]["port"] = 0
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return parse_config(base, "test config", tmp_path)

    return build


@pytest.fixture(scope="session")
def recognizer(models_dir: Path):
    """The shipped detector (TFLite) and OCR, loaded once per session."""
    from edge.recognize import FrameRecognizer

    base = load_config().model_dump(mode="json", exclude={"base_dir"})
    base["models"]["dir"] = str(models_dir)
    return FrameRecognizer.from_config(parse_config(base))


@pytest.fixture(scope="session")
def gpsfake_executable() -> str:
    from test_gps import require_tool

    require_tool("gpsd", ":/usr/sbin:/sbin")
    return require_tool("gpsfake")
