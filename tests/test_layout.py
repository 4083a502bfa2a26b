"""The import rules docs/layout.md states, read from the source: the ML core never reaches the
backend, Flask or HTTP code, and the backend never imports the offline tools."""

import ast
from pathlib import Path

from tests.conftest import REPO

WEB = {"ml_backend", "flask", "werkzeug", "requests", "httpx", "urllib3", "rq", "redis", "label_studio_ml"}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every import statement of a file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:  # `from a import b` may import a.b
            found += [(f"{node.module}.{alias.name}", id(node) in top) for alias in node.names]
    return found


def sources(package: str) -> list[Path]:
    files = sorted((REPO / package).rglob("*.py"))
    assert len(files) > 10, package
    return files


def test_the_ml_core_imports_no_backend_and_no_http_code_and_the_sdk_only_lazily_in_one_adapter():
    for path in sources("model"):
        where = path.relative_to(REPO).as_posix()
        for module, module_level in imports(path):
            root = module.split(".")[0]
            assert root not in WEB, f"{where} imports {module}"
            if root == "label_studio_sdk":
                assert where == "model/datasets/label_studio.py" and not module_level, f"{where} imports {module}"


def test_the_backend_never_imports_the_offline_tools():
    for path in sources("ml_backend"):
        for module, _ in imports(path):
            assert not module.startswith("model.experiments"), f"{path.relative_to(REPO)} imports {module}"
