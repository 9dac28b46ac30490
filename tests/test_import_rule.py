"""The import rule of helper/__init__.py, read from every module's imports (function-level ones included)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# helper's layers, top first: a module may import its own sub-package and the layers below its own
LAYERS = [{"cli", "deploy"}, {"training"}, {"teachers", "loaders"}, {"runs"}, {"runtime"}, {"errors", "argtypes"}]
RANK = {part: depth for depth, layer in enumerate(LAYERS) for part in layer}
LEAVES = {"helper.errors", "helper.argtypes"}


def module_name(path):
    """'helper/cli/main.py' -> 'helper.cli.main' ('.../__init__.py' names its package)."""
    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, source=None):
    """Every module `path` (or `source` as if it were there) imports, absolute; `from X import name` counts as X and
    X.name (the name may be a module)."""
    if source is None:
        with open(path) as handle:
            source = handle.read()
    tree = ast.parse(source, path)
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return found


def python_files(*folders):
    for folder in folders:
        for top, _, files in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(top, name) for name in files if name.endswith(".py"))


def test_relative_and_function_level_imports_are_read():
    text = "from . import main\nfrom ..runs import store\ndef f():\n    import distiller_zoo.kd\n"
    found = imported_modules(os.path.join(ROOT, "helper", "cli", "x.py"), text)
    assert {"helper.cli.main", "helper.runs.store", "distiller_zoo.kd"} <= set(found)
    found = imported_modules(os.path.join(ROOT, "helper", "cli", "__init__.py"), "from .main import main\n")
    assert "helper.cli.main" in found


def test_models_and_dataset_import_nothing_of_ours_above_them():
    bad = [(module_name(p), m) for p in python_files("models", "dataset") for m in imported_modules(p)
           if m.split(".")[0] in ("helper", "distiller_zoo")]
    assert not bad


def test_methods_import_only_the_leaf_helpers_and_models():
    allowed = LEAVES | {"helper"}  # "helper" alone: `from helper import errors` names the package too
    bad = [(module_name(p), m) for p in python_files("distiller_zoo") for m in imported_modules(p)
           if m.split(".")[0] == "helper" and not any(m == ok or m.startswith(ok + ".") for ok in LEAVES)
           and m not in allowed]
    assert not bad


def test_only_the_command_line_layer_imports_the_method_registry():
    bad = [(module_name(p), m) for p in python_files("helper") for m in imported_modules(p)
           if m.split(".")[0] == "distiller_zoo" and not module_name(p).startswith("helper.cli")]
    assert not bad


def test_helper_imports_only_go_down_its_layers():
    bad = []
    for path in python_files("helper"):
        source = module_name(path).split(".")
        if len(source) < 2:
            continue  # helper/__init__.py: the map only
        own = source[1]
        for name in imported_modules(path):
            target = name.split(".")
            if target[0] != "helper" or len(target) < 2 or target[1] == own or target[1] not in RANK:
                continue
            if RANK[target[1]] <= RANK[own]:
                bad.append((".".join(source), name))
    assert not bad, "imports that go up or sideways: " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_every_helper_sub_package_is_in_a_layer():
    packages = {name for name in os.listdir(os.path.join(ROOT, "helper"))
                if os.path.isfile(os.path.join(ROOT, "helper", name, "__init__.py"))}
    modules = {name[:-3] for name in os.listdir(os.path.join(ROOT, "helper"))
               if name.endswith(".py") and name != "__init__.py"}
    assert packages | modules == set(RANK)
