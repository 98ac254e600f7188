"""`acmix-bench demo`: every identity it prints holds, and the command says so."""
import io
from contextlib import redirect_stdout

from bench.cli import main
from bench.demo import equivalences


def test_demo_identities_hold():
    rows = equivalences()
    assert len(rows) == 13
    for check, dtype, err, tol in rows:
        assert err <= tol, (check, dtype, err)


def test_demo_command_prints_table_and_exits_zero():
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["demo", "--size", "14", "--batch", "1", "--repeats", "1", "--threads", "1"])
    out = buf.getvalue()
    assert rc == 0, out
    assert "FAIL" not in out
    assert "ACmix sliding window" in out and "17,822" in out  # docs/operators.md block: 64 channels, N = 4
