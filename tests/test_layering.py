"""The import rules the architecture depends on, checked on the source (no module is imported to check it).

* nothing under ``secure_infer/`` imports ``protocols`` (the library does not
  know how parties are run);
* no module outside a backend imports that backend's private modules
  (``secure_infer.backends.tenseal._seal`` and the like): protocols, other
  library modules and benchmarks use the backends' public names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module name ``path`` imports, absolute (``from . import x`` resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.append((node.lineno, base))
            names += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return names


def _sources(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py")) if "proto" not in p.parts]


def test_the_library_never_imports_protocols() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in _sources("secure_infer")
           for line, name in _imports(p) if name == "protocols" or name.startswith("protocols.")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("backend", ["tenseal", "crypten"])
def test_only_a_backend_imports_its_private_modules(backend: str) -> None:
    private = f"secure_infer.backends.{backend}._"
    own = ROOT / "secure_infer" / "backends" / backend
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in _sources("secure_infer", "protocols", "benchmarks")
           if own not in p.parents for line, name in _imports(p) if name.startswith(private)]
    assert not bad, "\n".join(bad)


def test_the_rule_checker_sees_a_violation(tmp_path: Path) -> None:
    """The checks above can fail: a planted private import is found."""
    planted = ROOT / "protocols" / "_planted_for_test.py"
    planted.write_text("from secure_infer.backends.tenseal._seal import to_bytes\n")
    try:
        with pytest.raises(AssertionError, match="_planted_for_test"):
            test_only_a_backend_imports_its_private_modules("tenseal")
    finally:
        planted.unlink()


def test_generated_grpc_code_matches_the_proto(tmp_path: Path) -> None:
    """protocols/he/proto/*_pb2*.py are what grpc_tools makes from inference.proto today (regenerate, compare)."""
    pytest.importorskip("grpc_tools")
    proto = "protocols/he/proto/inference.proto"
    out = tmp_path / "gen"
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={out}", f"--pyi_out={out}",
                           f"--grpc_python_out={out}", proto], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py"):
        fresh = (out / "protocols" / "he" / "proto" / name).read_text()
        committed = (ROOT / "protocols" / "he" / "proto" / name).read_text()
        assert fresh == committed, (f"{name} is stale: regenerate with python -m grpc_tools.protoc -I. --python_out=. "
                                    f"--pyi_out=. --grpc_python_out=. {proto}")


def test_test_module_names_are_unique() -> None:
    """Test folders have no __init__.py, so pytest imports test modules by basename: two alike break collection."""
    import collections

    root = Path(__file__).resolve().parent
    names = collections.Counter(p.name for p in root.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], "rename the test modules that share a basename"
