"""The import layers of ``docs/ARCHITECTURE.md`` hold: front doors > job core > stages >
foundations, and no import points up, also none made inside a function.

The contract is ``[tool.importlinter]`` in ``pyproject.toml``; import-linter builds the import
graph of the installed ``splatforge`` package (grimp reads every import statement, at module
level and inside functions) and checks the contract over it. It runs in its own process: its
command line reconfigures logging (``dictConfig``), which would silence the package's loggers
for the tests after this one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_LINT = ("import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")


def test_no_import_points_up_a_layer():
    out = subprocess.run([sys.executable, "-c", _LINT, str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout
