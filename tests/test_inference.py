"""The inference API (dynamask.inference) and the import direction it anchors.

Data flows one way: models ← inference API ← engine / CLI. The import checks read the source with
``ast`` (function-local imports included), so they hold for code paths no other test runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from dynamask.errors import DynaMaskError
from dynamask.inference import apply_policy, resolve_device

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "dynamask"

#: Modules allowed to import private names of other modules (none).
PRIVATE_IMPORT_EXEMPT: set = set()

#: Modules (and packages, by prefix) that must not depend on dynamask.engine.
BELOW_ENGINE = ("dynamask.inference", "dynamask.predictor", "dynamask.models", "dynamask.data")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parse_package() -> dict:
    """{module name: (ast tree, is_package)} for every module under src/dynamask."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        out[_module_name(path)] = (ast.parse(path.read_text(encoding="utf-8"), str(path)), path.name == "__init__.py")
    return out


MODULES = _parse_package()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list:
    """(imported dynamask module, imported name or None, line) for every import in ``module``,
    wherever it sits (top level, function, class, try block). ``from pkg import sub`` of a
    submodule is reported as an import of ``pkg.sub``."""
    tree, is_package = MODULES[module]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "dynamask" or alias.name.startswith("dynamask."):
                    found.append((alias.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            if target != "dynamask" and not target.startswith("dynamask."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    found.append((sub, None, node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.Call):  # importlib.import_module("dynamask....") / __import__
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (
                name in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and node.args[0].value.startswith("dynamask")
            ):
                found.append((node.args[0].value, None, node.lineno))
    return found


def _module_aliases(module: str) -> dict:
    """{local name: dynamask module} for names bound to whole modules (``from . import x as y``,
    ``import dynamask.x as y``), so that ``y._private`` can be told apart."""
    tree, is_package = MODULES[module]
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name.startswith("dynamask"):
                    aliases[alias.asname] = alias.name
    return aliases


def test_the_package_was_found():
    assert {"dynamask.inference", "dynamask.predictor", "dynamask.engine.evaluate", "dynamask.models.detector"} <= set(
        MODULES
    )


def test_no_module_imports_a_private_name_of_another_module():
    problems = []
    for module in MODULES:
        if module in PRIVATE_IMPORT_EXEMPT:
            continue
        for target, name, line in _imports(module):
            if target == module:
                continue
            private_module = any(_is_private(part) for part in target.split("."))
            if private_module or (name is not None and _is_private(name)):
                problems.append(f"{module}:{line} imports {name or target} from {target}")
        aliases = _module_aliases(module)
        for node in ast.walk(MODULES[module][0]):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _is_private(node.attr)
                and aliases[node.value.id] != module
            ):
                problems.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr} of {aliases[node.value.id]}")
    assert not problems, "private names used across modules (make them public):\n" + "\n".join(problems)


def _dependencies(module: str) -> set:
    """Every dynamask module ``module`` may import, directly or not (parent packages included,
    as Python imports them first)."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen or current not in MODULES:
            continue
        seen.add(current)
        for target, _, _ in _imports(current):
            parts = target.split(".")
            todo.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return seen


def _is_engine(module: str) -> bool:
    return module == "dynamask.engine" or module.startswith("dynamask.engine.")


def test_inference_predictor_models_and_data_import_nothing_from_the_engine():
    below = [m for m in MODULES if any(m == p or m.startswith(p + ".") for p in BELOW_ENGINE)]
    assert "dynamask.inference" in below and "dynamask.models.detector" in below and "dynamask.data.coco" in below
    direct, indirect = [], []
    for module in below:
        for target, name, line in _imports(module):
            if _is_engine(target) or (target == "dynamask" and name == "engine"):
                direct.append(f"{module}:{line} imports {target}{'.' + name if name else ''}")
        reached = sorted(m for m in _dependencies(module) if _is_engine(m))
        if reached:
            indirect.append(f"{module} reaches {', '.join(reached)}")
    assert not direct, "imports from dynamask.engine:\n" + "\n".join(direct)
    assert not indirect, "imports that lead into dynamask.engine:\n" + "\n".join(indirect)


def test_engine_and_cli_load_checkpoints_through_the_inference_api():
    cli = ("dynamask.cli.checkpoint_config", "dynamask.cli.calibrate", "dynamask.cli.export")
    for module in ("dynamask.predictor", "dynamask.engine.eval_job", "dynamask.engine.demo", *cli):
        assert "dynamask.inference" in {t for t, _, _ in _imports(module)}, module


# --------------------------------------------------------------------------
# behaviour
# --------------------------------------------------------------------------
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("").type == expected
    with pytest.raises(DynaMaskError, match="device 'no-such-device'"):
        resolve_device("no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(DynaMaskError, match="CUDA is not available"):
            resolve_device("cuda")


def test_apply_policy_sets_what_the_model_can_run_and_names_what_it_cannot():
    from dynamask.models import maskrcnn_resnet18_fpn

    model = maskrcnn_resnet18_fpn(3, fpn_channels=16, mask_head_channels=8)
    apply_policy(model, None, None)  # nothing asked: nothing changes
    assert model.policy == "fixed-28" and model.mask_budget == 1.0
    apply_policy(model, "fixed-28", 0.5)
    assert model.policy == "fixed-28" and model.mask_budget == 0.5
    with pytest.raises(DynaMaskError, match="policy 'fixed-112' cannot be used with this model"):
        apply_policy(model, "fixed-112", None)
    with pytest.raises(DynaMaskError, match="mask budget 1.5"):
        apply_policy(model, None, 1.5)
    with pytest.raises(DynaMaskError, match="mask budget 'lots'"):
        apply_policy(model, None, "lots")
    assert model.policy == "fixed-28" and model.mask_budget == 0.5  # refused values leave it as it was
