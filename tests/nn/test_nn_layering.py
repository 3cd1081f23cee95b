import ast
from pathlib import Path

import ldmkit.nn

NN_DIR = Path(ldmkit.nn.__file__).parent


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of every module imported by ``path`` (relative imports resolved from ldmkit.nn)."""
    package = ["ldmkit", "nn", *path.relative_to(NN_DIR).parent.parts]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out += [module] + [f"{module}.{a.name}" for a in node.names]
    return out


def test_nn_never_imports_diffusion():
    files = list(NN_DIR.rglob("*.py"))
    assert len(files) >= 6
    for path in files:
        for name in _imported_modules(path):
            assert not (name + ".").startswith("ldmkit.diffusion."), f"{path.name} imports {name}"
