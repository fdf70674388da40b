import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(text)
    return path


def test_shipped_config_is_valid_and_equals_the_defaults():
    shipped = load_config(DEFAULT_CONFIG_PATH)
    defaults = parse_config({}, "defaults", DEFAULT_CONFIG_PATH.parent)
    assert shipped.model_dump(exclude={"cameras"}) == defaults.model_dump(exclude={"cameras"})
    assert shipped.cameras[0].source == "picamera2"


def _leaf_keys(model, prefix=""):
    for name, field in type(model).model_fields.items():
        if name == "base_dir":
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaf_keys(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            yield from _leaf_keys(value[0], f"{prefix}{name}[].")
        else:
            yield f"{prefix}{name}", field


def test_every_config_key_has_a_description_and_a_commented_line_in_config_toml():
    text = DEFAULT_CONFIG_PATH.read_text()
    config = load_config()
    for key, field in _leaf_keys(config):
        assert field.description, f"{key} has no description"
        leaf = key.rsplit(".", 1)[-1]
        match = re.search(rf"^#.*\n(?:^[#\w].*\n)*^{leaf} = ", text, re.MULTILINE)
        assert match, f"{key} is not in config.toml with a comment above it"


def test_unknown_key_is_an_error_naming_its_path(tmp_path):
    path = write(tmp_path, "[detector]\ntreads = 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "detector.treads: unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_bad_value_in_a_camera_names_the_index(tmp_path):
    path = write(tmp_path, '[[cameras]]\nid = "front"\nsource = "video"\nuri = "a.mp4"\nfps = -3\n')
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.fps: Input should be greater than 0"):
        load_config(path)


def test_wrong_type_and_bad_choice_are_both_reported(tmp_path):
    path = write(tmp_path, '[detector]\nbackend = "tensorrt"\nthreads = "two"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "detector.backend" in str(err.value) and "detector.threads" in str(err.value)


def test_video_camera_without_uri_is_refused(tmp_path):
    path = write(tmp_path, '[[cameras]]\nid = "rear"\nsource = "video"\n')
    with pytest.raises(ConfigError, match=r"cameras\[0\].*needs a uri"):
        load_config(path)


def test_duplicate_camera_ids_are_refused(tmp_path):
    cam = '[[cameras]]\nid = "front"\nsource = "opencv"\nuri = "0"\n'
    with pytest.raises(ConfigError, match="camera id 'front' is used twice"):
        load_config(write(tmp_path, cam + cam))


def test_toml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "[detector\nthreads = 2\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": not valid TOML"):
        load_config(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_config(tmp_path / "nope.toml")


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path):
    path = write(tmp_path, '[device]\ndata_dir = "state"\n')
    config = load_config(path)
    assert config.database_path == tmp_path / "state" / "alpr.db"
    assert isinstance(config, Config)


def test_check_config_command_reports_errors_and_exits_2(tmp_path):
    path = write(tmp_path, "[tracker]\nmax_gap = 3\n")
    res = subprocess.run(
        [sys.executable, "-m", "edge.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 2
    assert "tracker.max_gap: unknown key" in res.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "edge.cli", "check-config", str(DEFAULT_CONFIG_PATH)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0 and ": ok;" in ok.stdout
