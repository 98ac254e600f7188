"""Import layering: reports read records and never import bench (no cycle), and stay torch-free."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names, at any depth (function bodies included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_reports_source_never_imports_bench():
    files = sorted((ROOT / "reports").glob("*.py"))
    assert files
    bad = {f.name: sorted(m for m in _imported_modules(f) if m == "bench" or m.startswith("bench."))
           for f in files}
    assert {f: m for f, m in bad.items() if m} == {}


def test_importing_reports_loads_neither_bench_nor_torch():
    code = ("import json, sys; import reports.schema, reports.records; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('bench', 'torch', 'modules'))))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []


def test_runner_uses_the_reports_schema():
    from bench.runner import records as R
    from reports import schema

    assert R.validate_record is schema.validate_record
    assert (R.SCHEMA, R.STATUSES, R.FINISHED) == (schema.SCHEMA, schema.STATUSES, schema.FINISHED)
