"""The package layout: one import direction between the layers, and pyproject.toml lists every sub-package.

Layers, bottom to top (a module may import its own layer and the ones below, never one above)::

    physics <- pipeline.io <- models <- pipeline.outputs <- workflows <- pipeline.cli

``pipeline.simulate`` is a side branch: it imports only ``physics``, ``pipeline.io`` and itself, and only
``pipeline.cli`` imports it.  Every ``import`` / ``from`` statement counts, function-local ones included.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Top-level folder -> installed package (pyproject.toml's package-dir).
FOLDERS = {"physics": "cmbdetect.physics", "models": "cmbdetect.models", "pipeline": "cmbdetect.pipeline",
           "workflows": "cmbdetect.workflows"}
LAYERS = ("cmbdetect.physics", "cmbdetect.pipeline.io", "cmbdetect.models", "cmbdetect.pipeline.outputs",
          "cmbdetect.workflows", "cmbdetect.pipeline.cli")
SIMULATE = "cmbdetect.pipeline.simulate"


def layer_of(module: str) -> str:
    """The layer (or :data:`SIMULATE`) a ``cmbdetect`` module belongs to; the bare ``cmbdetect.pipeline``
    package counts as ``pipeline.io`` (its ``__init__`` holds nothing)."""
    for layer in (*LAYERS, SIMULATE):
        if module == layer or module.startswith(layer + "."):
            return layer
    if module == "cmbdetect.pipeline":
        return "cmbdetect.pipeline.io"
    raise AssertionError(f"{module} belongs to no layer (a module directly in pipeline/?)")


def allowed(importer: str, imported: str) -> bool:
    a, b = layer_of(importer), layer_of(imported)
    if a == SIMULATE:
        return b in (SIMULATE, "cmbdetect.physics", "cmbdetect.pipeline.io")
    if b == SIMULATE:
        return a == "cmbdetect.pipeline.cli"
    return LAYERS.index(b) <= LAYERS.index(a)


def package_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement of the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # ``from cmbdetect.pipeline.cli import run``: the names may be modules themselves
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names
                      if f"{name}.{alias.name}" in MODULES]
    return [(line, name) for line, name in found if name == "cmbdetect" or name.startswith("cmbdetect.")]


MODULES = package_modules()


def test_layers_cover_every_module():
    for module in MODULES:
        if module not in ("cmbdetect.pipeline",):
            layer_of(module)


def test_one_import_direction():
    wrong = [f"{path.relative_to(ROOT)}:{line}: {module} ({layer_of(module)}) imports {name} ({layer_of(name)})"
             for module, path in MODULES.items() for line, name in imports_of(module, path)
             if name != "cmbdetect" and not allowed(module, name)]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_rule_rejects_what_it_should():
    assert allowed("cmbdetect.pipeline.cli.run", "cmbdetect.workflows.cmb")
    assert not allowed("cmbdetect.workflows.interfaces", "cmbdetect.pipeline.cli.common")
    assert not allowed("cmbdetect.models.training_data", "cmbdetect.pipeline.outputs.candidates")
    assert not allowed("cmbdetect.pipeline.io.dicom", "cmbdetect.pipeline.simulate.dicom")
    assert not allowed("cmbdetect.pipeline.simulate.subject", "cmbdetect.models.registry")
    assert not allowed("cmbdetect.physics.chain", "cmbdetect.pipeline.io.atomic")


def test_pyproject_lists_every_subpackage():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for folder, package in FOLDERS.items():
        assert config["package-dir"][package] == folder
        for init in (ROOT / folder).rglob("__init__.py"):
            if "weights" not in init.parts:
                found.add(".".join([package, *init.parent.relative_to(ROOT / folder).parts]))
    folders_without_init = [p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")
                            if not (p.parent / "__init__.py").is_file()]
    assert not folders_without_init, f"modules outside a package: {folders_without_init}"
    assert set(config["packages"]) == found


def test_tests_mirror_the_package_layout():
    """Each folder of tests/ (but data/) is a package folder: tests/pipeline/io tests pipeline/io, ..."""
    for folder in (ROOT / "tests").rglob("*"):
        rel = folder.relative_to(ROOT / "tests")
        if folder.is_dir() and rel.parts[0] != "data" and "__pycache__" not in rel.parts:
            assert (ROOT / rel / "__init__.py").is_file(), f"tests/{rel} mirrors no package folder"
    assert not [p.name for p in (ROOT / "tests").glob("test_*.py")
                if p.name not in ("test_layout.py", "test_same_tables.py")], "module tests belong in a mirror folder"
