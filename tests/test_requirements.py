"""requirements.txt is complete: every third-party package the code imports is named there (or is optional), and
every requirement imports in the environment the tests run in (CI builds a fresh venv from requirements.txt alone)."""
import ast
import importlib.util
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# import name -> the requirement that brings it (as a dependency of its own, not named in requirements.txt)
PROVIDED_BY = {"PIL": "torchvision", "google": "tensorboard"}
IMPORT_NAME = {"pillow": "PIL"}  # requirement -> import name, where they differ
# packages some code paths use only when they are installed, each with a one-line "pip install X" message
OPTIONAL = {"timm", "safetensors"}
SKIPPED_FOLDERS = {".git", "__pycache__", "venv", ".venv", "save", "data", "ledger", "runs"}


def requirement_names():
    """The distribution names in requirements.txt, lower-cased, without version specifiers or extras."""
    names = []
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                names.append(re.split(r"[<>=!~\[;\s]", line, maxsplit=1)[0].lower())
    return names


def project_files():
    """Every .py file of the project (not in caches, environments or run outputs)."""
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in SKIPPED_FOLDERS and not d.startswith(".")]
        yield from (os.path.join(folder, name) for name in files if name.endswith(".py"))


def own_module_names():
    """Names that import from this project: its packages and the stem of every .py file (scripts put their folder
    on sys.path, e.g. benchmarks import tests' `datafakes`)."""
    names = {os.path.splitext(os.path.basename(path))[0] for path in project_files()}
    return names | {os.path.relpath(path, ROOT).split(os.sep)[0] for path in project_files()}


def imported_top_level_modules():
    """{top-level module: first file importing it} over every .py file of the project."""
    found = {}
    for path in project_files():
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], os.path.relpath(path, ROOT))
    return found


def third_party(modules):
    """The modules that are neither the standard library nor this project's own packages."""
    ours = own_module_names()
    return {m: where for m, where in modules.items()
            if m not in sys.stdlib_module_names and m not in ours and m != "__future__"}


def test_every_imported_package_is_a_requirement():
    required = set(requirement_names())
    missing = {m: where for m, where in third_party(imported_top_level_modules()).items()
               if m.lower() not in required and PROVIDED_BY.get(m) not in required and m not in OPTIONAL}
    assert not missing, f"imported but not in requirements.txt (module: first importer): {missing}"


@pytest.mark.parametrize("requirement", requirement_names())
def test_every_requirement_is_installed(requirement):
    module = IMPORT_NAME.get(requirement, requirement)
    assert importlib.util.find_spec(module) is not None, (
        f"{requirement} is in requirements.txt but not importable here: pip install -r requirements.txt")


def test_the_scan_sees_the_project_and_its_dependencies():
    # guards the scan itself: a walk that read nothing would pass the tests above vacuously
    modules = imported_top_level_modules()
    assert {"torch", "torchvision", "numpy", "onnx", "onnxruntime", "matplotlib"} <= set(third_party(modules))
    assert "helper" in modules and "os" in modules and "os" not in third_party(modules)
