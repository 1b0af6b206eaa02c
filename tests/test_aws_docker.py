"""The batch-worker container: docker/Dockerfile passes hadolint (no Docker engine runs
here), and the image's build and entry point are what the README says."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    r = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_dockerfile_contract():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[0-9.]+-devel-", text, re.M)  # nvcc
    assert "ARG TORCH_CUDA_ARCH_LIST=" in text
    assert 'ENTRYPOINT ["splatforge", "aws-task"]' in text.splitlines()
    # the warm-up compiles gsplat's extension at build time and keeps it where splatforge
    # loads it from (splatforge.raster.gsplat_backend reads SPLATFORGE_GSPLAT_SO)
    assert "from gsplat.cuda._backend import _C" in text
    assert "SPLATFORGE_GSPLAT_SO=/opt/gsplat/gsplat_cuda.so" in text
    assert "SPLATFORGE_GSPLAT_SO" in (REPO / "src/splatforge/raster/gsplat_backend.py").read_text()
    # what the image copies exists, and the build context leaves the rest out
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for name in src.split():
            assert (REPO / name).exists(), name
    ignored = (REPO / ".dockerignore").read_text().split()
    for name in (".git", ".venv", "tests", "samples"):
        assert name in ignored


def test_entry_points_exist():
    """`splatforge aws-task` and `python -m splatforge.aws` are the image's entry points."""
    from splatforge.aws.commands import aws_task
    from splatforge.cli import COMMANDS

    assert COMMANDS["aws-task"] is aws_task and "submit-job" in COMMANDS
    r = subprocess.run([sys.executable, "-m", "splatforge.aws"], capture_output=True,
                       text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 2 and "BUCKET: required, not set" in r.stderr
