"""The walls between rooms (docs/architecture.md), held by parsing imports."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ldmkit"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every ldmkit module imported by ``path`` (relative imports resolved)."""
    pkg = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(pkg[:len(pkg) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("ldmkit")}


def room_files(room: str):
    return sorted((SRC / room).rglob("*.py"))


def test_diffusion_imports_nothing_else():
    for f in room_files("diffusion"):
        bad = {m for m in imported_modules(f) if not m.startswith(("ldmkit.diffusion", "ldmkit.config"))}
        assert not bad, f"{f.name} imports {bad}"


def test_nn_never_imports_diffusion():
    for f in room_files("nn"):
        assert not {m for m in imported_modules(f) if m.startswith("ldmkit.diffusion")}, f.name


@pytest.mark.parametrize("room", ["training", "cli", "serve"])
def test_only_cli_imports_training_and_cli(room):
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC).parts
        if rel[0] in ("cli", room, "__main__.py"):  # `python -m ldmkit` is the CLI's entry point
            continue
        assert not {m for m in imported_modules(f) if m.startswith(f"ldmkit.{room}")}, f"{f} imports {room}"
