"""Every module imports where Unix-only modules do not exist (Windows): CI cannot run Windows, so this hides them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

WITHOUT_UNIX_MODULES = """
import importlib.abc, pathlib, sys

class NoUnix(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("fcntl", "resource", "termios", "pwd", "grp"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None

for name in ("fcntl", "resource", "termios", "pwd", "grp"):
    sys.modules.pop(name, None)
sys.meta_path.insert(0, NoUnix())
root = pathlib.Path(sys.argv[1])
package = [".".join(p.relative_to(root).with_suffix("").parts) for p in (root / "backbones").rglob("*.py")]
package = [name.removesuffix(".__init__") for name in package if name != "backbones.__main__"]  # that one runs
names = [p.stem for p in root.glob("*.py")] + package
assert len(names) > 40, names
for name in sorted(names):
    importlib.import_module(name)
import torch
from backbones.cost import peak_memory_mb
print("imported", len(names), peak_memory_mb(torch.device("cpu")))
"""


@pytest.mark.slow  # a fresh interpreter importing everything: 7 s, and an edit rarely touches what it checks
def test_every_module_imports_without_unix_only_modules():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_UNIX_MODULES, str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("(None, 'unavailable')"), result.stdout
