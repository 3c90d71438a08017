"""The layering is checked, not just drawn: no module imports from a layer above its own,
no file is over ~400 lines, no function over ~80 lines without a reason in its docstring."""

import ast
import os


ROOT = os.path.join(os.path.dirname(__file__), "..", "leafe_jax")

# Highest first: a module may import from its own layer and any layer below it.
LAYERS = [("cli", "__main__"), ("pipeline",), ("leafe", "baselines"), ("eval",), ("interfaces",),
          ("train", "data"), ("policy",), ("envs", "sharding", "configs", "distributed", "__init__")]


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not in any layer of the contract; add it to LAYERS")


def _modules():
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.join(ROOT, ".."))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("leafe_jax"):
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("leafe_jax"):
                    yield a.name, node.lineno


def test_no_import_runs_up_the_layers():
    bad = []
    for mod, path in _modules():
        own = _layer(mod)
        for imp, line in _imports(path):
            if imp == "leafe_jax":
                continue
            if _layer(imp) < own:
                bad.append(f"{mod}:{line} imports {imp} ({LAYERS[_layer(imp)]} is above {LAYERS[own]})")
    assert not bad, "\n".join(bad)


def test_the_contract_catches_an_upward_import(tmp_path):
    """The check itself: an env module importing the pipeline is flagged."""
    f = tmp_path / "x.py"
    f.write_text("from leafe_jax.pipeline.run import run_pipeline\n")
    assert [(_layer(i), _layer("leafe_jax.envs.x")) for i, _ in _imports(f)] == [(1, 7)]


def test_file_and_function_sizes():
    long_files, long_funcs = [], []
    for mod, path in _modules():
        src = open(path).read()
        if src.count("\n") > 400:
            long_files.append(f"{mod}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if n > 80 and "long because" not in doc.lower():
                    long_funcs.append(f"{mod}.{node.name}: {n} lines")
    assert not long_files, long_files
    assert not long_funcs, long_funcs
