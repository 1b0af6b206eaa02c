"""The import layers of ``docs/ARCHITECTURE.md`` hold: front doors > job core > stages >
foundations, and no import points up, also none made inside a function.

The contract is ``[tool.importlinter]`` in ``pyproject.toml``; import-linter builds the import
graph of the installed ``splatforge`` package (grimp reads every import statement, at module
level and inside functions) and checks the contract over it.
"""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_points_up_a_layer(capsys):
    rc = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True,
                      no_logo=True)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "1 kept, 0 broken" in out
