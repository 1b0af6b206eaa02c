"""The batch-worker container: docker/Dockerfile passes hadolint (no Docker engine runs
here), and what the image does, read from its parsed instructions, works: its entry point
runs the worker, the gsplat library path it sets is the one splatforge loads, and what it
copies exists."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    cur = ""
    for line in path.read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return dict(shlex.split(rest)[0].partition("=")[::2]
                for word, rest in instructions if word == "ARG")


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    r = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_image_builds_on_a_devel_cuda_base_and_copies_what_exists():
    ins = parse_dockerfile(DOCKERFILE)
    args = _args(ins)
    frm = [rest for word, rest in ins if word == "FROM"]
    assert frm == ["${CUDA_IMAGE}"]
    image = args["CUDA_IMAGE"]
    assert image.startswith("nvidia/cuda:") and "-devel-" in image  # nvcc for gsplat
    assert args.get("TORCH_CUDA_ARCH_LIST")
    for word, rest in ins:
        if word == "COPY":
            *srcs, _dest = shlex.split(rest)
            for name in srcs:
                assert (REPO / name).exists(), name


def test_entry_point_runs_the_worker():
    """The image's ENTRYPOINT, run as the image would (no AWS environment): the worker
    starts, validates its environment and exits 2 naming the missing variable."""
    ins = parse_dockerfile(DOCKERFILE)
    entry = json.loads([rest for word, rest in ins if word == "ENTRYPOINT"][-1])
    assert entry[0] == "splatforge"
    from splatforge.cli import COMMANDS

    assert entry[1] in COMMANDS
    r = subprocess.run([sys.executable, "-m", "splatforge", *entry[1:]], capture_output=True,
                       text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 2 and "BUCKET: required, not set" in r.stderr
    r = subprocess.run([sys.executable, "-m", "splatforge.aws"], capture_output=True,
                       text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 2 and "BUCKET: required, not set" in r.stderr


def test_gsplat_library_path_is_the_one_splatforge_loads(tmp_path, monkeypatch):
    """The image's SPLATFORGE_GSPLAT_SO is where its build step copies the compiled library,
    and splatforge's loader reads that variable (shown with a library that is not there and
    one that is not an extension)."""
    ins = parse_dockerfile(DOCKERFILE)
    so = _env(ins)["SPLATFORGE_GSPLAT_SO"]
    assert so.endswith(".so")
    builds = [rest for word, rest in ins if word == "RUN" and "gsplat" in rest]
    assert any('"${SPLATFORGE_GSPLAT_SO}"' in b for b in builds)
    from splatforge.raster import gsplat_backend

    monkeypatch.delitem(sys.modules, "gsplat.csrc", raising=False)
    monkeypatch.setenv("SPLATFORGE_GSPLAT_SO", so)
    with pytest.raises(ImportError, match="no such file"):
        gsplat_backend.load_prebuilt_gsplat_extension()
    bogus = tmp_path / "gsplat_cuda.so"
    bogus.write_bytes(b"not an ELF file")
    monkeypatch.setenv("SPLATFORGE_GSPLAT_SO", str(bogus))
    with pytest.raises(ImportError):
        gsplat_backend.load_prebuilt_gsplat_extension()
    assert "gsplat.csrc" not in sys.modules


def test_build_context_leaves_out_local_state():
    ignored = (REPO / ".dockerignore").read_text().split()
    for name in (".git", ".venv", "tests", "samples"):
        assert name in ignored
