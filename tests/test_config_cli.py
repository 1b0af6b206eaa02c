"""Config models and the ``splatforge`` command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from splatforge.config import IngestConfig, SceneConfig, SfmConfig, parse_config
from splatforge.errors import ConfigError

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SPLATFORGE = [sys.executable, "-m", "splatforge"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([*SPLATFORGE, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.mark.parametrize(
    "model, field, value, expect",
    [
        (SfmConfig, "max_num_features", 5, "allowed: 64 <= value <= 65536"),
        (SfmConfig, "sequential_overlap", 0, "allowed: 1 <= value <= 1000"),
        (IngestConfig, "max_num_images", 2, "allowed: 3 <= value <= 100000"),
        (IngestConfig, "blur_filter_percent", 100, "allowed: 0.0 <= value < 100.0"),
        (SceneConfig, "test_every", -1, "allowed: 0 <= value <= 10000"),
    ],
)
def test_out_of_range_values_name_field_and_range(model, field, value, expect):
    with pytest.raises(ConfigError) as e:
        parse_config(model, {field: value})
    msg = str(e.value)
    assert field in msg and expect in msg and repr(value) in msg
    with pytest.raises(ConfigError) as e:  # direct construction reports the same way
        model(**{field: value})
    assert field in str(e.value) and expect in str(e.value)


def test_choices_unknown_keys_and_cross_field_rules():
    with pytest.raises(ConfigError, match="matching: Input should be 'auto'"):
        parse_config(SfmConfig, {"matching": "nearest"})
    with pytest.raises(ConfigError, match="data_factor"):
        parse_config(SceneConfig, {"data_factor": 3})
    with pytest.raises(ConfigError, match="max_steps: Extra inputs are not permitted"):
        parse_config(SfmConfig, {"max_steps": 10})
    with pytest.raises(ConfigError, match="stop_time"):
        parse_config(IngestConfig, {"start_time": 5, "stop_time": 2})
    with pytest.raises(ConfigError, match=r"background values must lie in \[0, 1\]"):
        parse_config(SceneConfig, {"background": (2, 0, 0)})


def test_configs_round_trip_through_json():
    cfg = SfmConfig(matching="sequential", sequential_overlap=20, mapping="global")
    again = parse_config(SfmConfig, json.loads(cfg.model_dump_json()))
    assert again == cfg
    schema = SfmConfig.model_json_schema()
    assert schema["properties"]["max_num_features"]["minimum"] == 64


def test_cli_help_lists_subcommands_and_flags():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("info", "ingest", "sfm"):
        assert cmd in out.stdout
    out = run_cli("sfm", "--help")
    assert out.returncode == 0
    for flag in ("--max-num-features", "--matching", "--mapping", "--max-num-images", "--force"):
        assert flag in out.stdout


def test_cli_bad_value_exits_2_with_field_and_range(tmp_path):
    out = run_cli("sfm", DATASETS / "plush_dog/images_4", "-o", tmp_path / "ws",
                  "--max-num-features", "5")
    assert out.returncode == 2
    assert "max_num_features" in out.stderr and "64 <= value <= 65536" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "ws").exists()


def test_cli_missing_media_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    out = run_cli("ingest", missing, "-o", tmp_path / "ws")
    assert out.returncode == 2
    assert str(missing) in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_cli_sfm_end_to_end_with_progress(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for p in sorted((DATASETS / "plush_dog/images_4").iterdir())[:10]:
        shutil.copy(p, src / p.name)
    ws = tmp_path / "ws"
    out = run_cli("sfm", src, "-o", ws, "--max-num-features", "2048")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "registered" in out.stdout and str(ws) in out.stdout
    # Not a terminal: plain progress lines with step k of n.
    assert "sfm: sfm steps 4/4" in out.stderr
    assert "extract features (images) 10/10" in out.stderr
    data = json.loads((ws / "sfm.json").read_text())
    assert data["num_images"] == 10 and data["num_registered"] >= 3
    # Second run: nothing to do.
    again = run_cli("sfm", src, "-o", ws)
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_cli_info_prints_what_was_read(tmp_path):
    env_cache = ["--cache-dir", str(tmp_path / "cache")]
    out = run_cli("info", DATASETS / "frames_colmap" / "dense", *env_cache)
    assert out.returncode == 0, out.stderr
    assert "format:       colmap" in out.stdout
    assert "images:       15 (train 13, test 2)" in out.stdout
    assert "points:       74" in out.stdout
    out = run_cli("info", DATASETS / "lego", "--json", "--background", "0", "0", "0", *env_cache)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["format"] == "blender"
    assert (data["num_train"], data["num_test"]) == (100, 25)
    assert data["image_sizes"] == {"400x400": 125}


def test_cli_info_on_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    out = run_cli("info", tmp_path)
    assert out.returncode == 2
    assert str(tmp_path) in out.stderr and "Traceback" not in out.stderr
