"""The folders show the architecture: no module of ``src/emae`` imports one of a higher layer (function-level
imports included), and no two modules import each other. Layers, top to bottom:
cli -> eval -> interop -> engine -> data / models -> config -> losses -> masks / viz / archs -> patches / errors."""

import ast
from pathlib import Path

import emae

ROOT = Path(emae.__file__).parent
LAYERS = {"cli": 8, "__main__": 8, "__init__": 8, "eval": 7, "interop": 6, "engine": 5, "data": 4, "models": 4,
          "config": 3, "losses": 2, "masks": 1, "viz": 1, "archs": 1, "patches": 0, "errors": 0, "records": 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def imports(path: Path, name: str | None = None) -> set[str]:
    """The emae modules a file (module ``name``, by default its own) imports, anywhere in it (relative imports
    resolved)."""
    name = name or module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("emae"):
                target = node.module.removeprefix("emae").lstrip(".")
            else:
                continue
            found.add(target or "__init__")
            found.update(f"{target}.{a.name}" for a in node.names if (ROOT / f"{target}.{a.name}".replace(".", "/")
                                                                       ).with_suffix(".py").is_file())
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("emae.") for a in node.names if a.name.startswith("emae."))
    return {t for t in found if t}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


def test_no_import_runs_up_the_layers():
    up = [f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})" for src, targets in graph().items()
          for dst in targets if layer(dst) > layer(src)]
    assert not up, "\n".join(up)


def test_no_two_modules_import_each_other():
    g = graph()
    pairs = sorted({tuple(sorted((a, b))) for a, targets in g.items() for b in targets if a != b and a in g.get(b, ())})
    assert not pairs, pairs


def test_the_test_sees_an_upward_import(tmp_path):
    """The walker finds a function-level import from a lower layer to a higher one (what the engine once did)."""
    (tmp_path / "x.py").write_text("def f():\n    from ..interop.load import init_from\n")
    found = imports(tmp_path / "x.py", "engine.trainer")
    assert "interop.load" in found and layer("interop.load") > layer("engine.trainer")
