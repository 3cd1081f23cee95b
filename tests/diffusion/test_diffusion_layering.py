"""Layering rule: ldmkit.diffusion imports nothing from ldmkit but ldmkit.config and itself."""
from __future__ import annotations

import ast
from pathlib import Path

import ldmkit.diffusion

PACKAGE = "ldmkit.diffusion"
ALLOWED = ("ldmkit.config", "ldmkit.diffusion")


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # resolve relative imports against ldmkit.diffusion.<module>
                base = PACKAGE.split(".")[: len(PACKAGE.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                names += [mod] if node.module else [f"{mod}.{alias.name}" for alias in node.names]
            else:
                names.append(node.module or "")
    return names


def _allowed(name: str) -> bool:
    if name != "ldmkit" and not name.startswith("ldmkit."):
        return True
    return any(name == a or name.startswith(a + ".") for a in ALLOWED)


def test_diffusion_imports_only_config():
    files = sorted(Path(ldmkit.diffusion.__file__).parent.rglob("*.py"))
    assert len(files) >= 7
    bad = [(f.name, n) for f in files for n in _imported_modules(f) if not _allowed(n)]
    assert not bad, f"ldmkit.diffusion may only import ldmkit.config: {bad}"
