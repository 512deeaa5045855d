"""`libs/common` (the `ember` distribution every role installs) imports no service and no test support.

Every module under libs/common/ember is parsed with `ast` and each import statement checked,
including imports inside functions. Exceptions, both by design:

- `ember.testing` itself: the private test-support module that tests/ and bench/ import.
- `ember <service> run` (`ember.cli.services`) starts a service that may not be installed: it
  imports `ember.<service>.__main__` by name at run time (`importlib`), never with an import
  statement, so no statement here names a service.
"""

from __future__ import annotations

import ast
from pathlib import Path

COMMON = Path(__file__).resolve().parents[1] / "libs" / "common"
FORBIDDEN = ("ember.manager", "ember.builder", "ember.notifier", "ember.flamelet", "ember.mldata", "ember.testing")
EXEMPT = {"ember.testing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(COMMON).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import; `from x import y` also yields `x.y`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def forbidden(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN)


def test_common_modules_are_found() -> None:
    modules = {module_name(path) for path in (COMMON / "ember").rglob("*.py")}
    assert {"ember.bus", "ember.data.client", "ember.actors.learner", "ember.cli.data", "ember.stack"} <= modules


def test_common_imports_no_service_and_no_test_support() -> None:
    offences = []
    for path in sorted((COMMON / "ember").rglob("*.py")):
        module = module_name(path)
        if module in EXEMPT:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name in imported_names(tree, module, path.name == "__init__.py"):
            if forbidden(name):
                offences.append(f"{path.relative_to(COMMON)}:{line} imports {name}")
    assert not offences, "libs/common must not import a service or ember.testing:\n" + "\n".join(offences)


def test_the_check_sees_imports_inside_functions_and_relative_ones() -> None:
    source = "def f():\n    from ember.mldata.client import load_table\nfrom ..mldata import store\nfrom ember import testing\n"
    names = {name for _, name in imported_names(ast.parse(source), "ember.cli.data", False) if forbidden(name)}
    assert names == {"ember.mldata.client", "ember.mldata.client.load_table", "ember.mldata", "ember.mldata.store", "ember.testing"}
