"""Finding a model function by `model.name`: a registered name or `package.module:function`.

A model function takes `(model config, image size, number of classes)` and returns a
Keras model mapping float images in [-1, 1] to logits. The built-ins and third-party
models register in the entry-point group `disttrain.models` (pyproject.toml), like the
launchers; a config may also name any importable function directly.

Pure Python: the config loader checks a name here before anything starts, without
importing the model's module (which would import TensorFlow); models.py imports it when
it builds the model.
"""

from __future__ import annotations

import ast
import importlib.util
from importlib import metadata
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "disttrain.models"
# The built-ins exactly as pyproject.toml registers them (tests/test_models.py compares the
# two). Used only while disttrain's own installed metadata lacks the `disttrain.models`
# group: an editable install made before the group existed, until it is reinstalled.
BUILTIN_MODELS = {
    "small_cnn": "disttrain.models:small_cnn",
    "alexnet": "disttrain.models:alexnet",
    "resnet50": "disttrain.models:resnet50",
}


def registered_models() -> dict[str, str]:
    """Registered name -> `module:function`, from the installed entry points."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**({} if _registers_its_own() else BUILTIN_MODELS), **found}


def _registers_its_own() -> bool:
    try:
        own = metadata.distribution("disttrain").entry_points
    except metadata.PackageNotFoundError:
        return False
    return any(ep.group == ENTRY_POINT_GROUP for ep in own)


def accepted_model_names() -> str:
    """What `model.name` accepts, for error messages."""
    names = ", ".join(sorted(registered_models()))
    return f"{names} (entry-point group {ENTRY_POINT_GROUP}) or package.module:function"


def model_name_problem(name: str) -> str:
    """Why `name` finds no model function ("" when it does), found without importing the
    function's module: the module must exist and, when it is Python source, define it."""
    if ":" not in name:
        return "" if name in registered_models() else "no model is registered under this name"
    module, _, function = name.partition(":")
    if not module or not function.isidentifier():
        return "expected package.module:function"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package that does not exist
        spec = None
    if spec is None:
        return f"module {module!r} not found (not installed, nor on PYTHONPATH)"
    if spec.origin and spec.origin.endswith(".py"):
        try:
            names = _top_level_names(spec.origin)
        except SyntaxError as exc:
            return f"module {module!r} ({spec.origin}) does not parse: {exc}"
        if names is not None and function not in names:
            return f"module {module!r} ({spec.origin}) has no function {function!r}"
    return ""


def _top_level_names(path: str) -> set[str] | None:
    """The names a module's source binds at top level; None when it cannot tell (a star
    import or a module `__getattr__` may provide any name)."""
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return None
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return None if "__getattr__" in names else names
