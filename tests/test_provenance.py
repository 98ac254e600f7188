"""Records say where they came from: Stage II backend per operator, CPU model, counting-library versions,
git commit and dirty flag; `run` warns before resuming a directory written by other code; the report
flags a table that mixes code versions."""
import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from importlib import metadata
from pathlib import Path


from bench.runner import provenance as P
from bench.runner import records as R

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "records"))
import make_records as mk  # noqa: E402


def test_environment_names_cpu_counting_libraries_and_dirty_flag():
    env = R.environment()
    assert env["counting"] == {"fvcore": metadata.version("fvcore"), "ptflops": metadata.version("ptflops")}
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), None)
    if cpu is not None:
        assert env["cpu"] == cpu
    commit, dirty = P.git_state()
    assert env["git_commit"] == commit and env["git_dirty"] == dirty
    if commit is not None:
        assert len(commit) == 40 and isinstance(dirty, bool)
    assert "stage2_backend" in env
    assert P.library_versions(("no-such-package-acmix",)) == {"no-such-package-acmix": None}


def test_git_state_sees_uncommitted_changes(tmp_path):
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    commit, dirty = P.git_state(str(tmp_path))
    assert len(commit) == 40 and dirty is False
    (tmp_path / "untracked.txt").write_text("results are not code")
    assert P.git_state(str(tmp_path)) == (commit, False)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert P.git_state(str(tmp_path)) == (commit, True)
    assert P.git_state(str(tmp_path / ".."))[0] != commit  # outside the repository


def test_stage2_backend_per_operator(monkeypatch):
    import torch

    from modules import _fast, create_model
    from modules.operators import set_stage2_impl

    probe = torch.empty(0)
    attn = _fast.backend_for(probe)  # "cpp" where the C++ kernel builds, else "torch"
    from modules._fast.conv_path import kernel_backend

    conv = kernel_backend(probe)
    assert P.stage2_backends(create_model("resnet26-acmix", num_classes=10)) == {
        "ACmix": {"attention": attn, "conv": conv}}
    assert P.stage2_backends(create_model("resnet26-sa", num_classes=10)) == {"LocalSelfAttention": {"attention": attn}}
    assert P.stage2_backends(create_model("resnet26-conv", num_classes=10)) == {}
    assert P.stage2_backends(create_model("swin_micro-acmix", num_classes=10)) == {
        "WindowACmix": {"attention": "sdpa", "conv": conv}}
    ref = set_stage2_impl(create_model("resnet26-acmix", num_classes=10), "reference")
    assert P.stage2_backends(ref) == {"ACmix": {"attention": "reference", "conv": "reference"}}
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "torch")
    assert P.stage2_backends(create_model("resnet26-acmix", num_classes=10)) == {
        "ACmix": {"attention": "torch", "conv": "torch"}}
    # the fixed one-hot shift kernels run as a plain grouped conv, never the C++ conv-path kernel
    m = create_model("resnet26-acmix", num_classes=10, shift="tensor")
    monkeypatch.delenv("ACMIX_FAST_BACKEND")
    assert P.stage2_backends(m)["ACmix"]["conv"] == "torch"


def _write(out, rec):
    R.write_record(str(out), rec)


def test_run_warns_before_resuming_a_directory_of_other_code(tmp_path):
    from bench.run_cli import warn_other_code

    commit, dirty = P.git_state()
    out = tmp_path / "out"
    rec = mk.make_record("resnet26-conv", "conv", None, None, None, 0)
    assert not warn_other_code(str(out), echo=lambda *a: None)  # empty: nothing to say
    rec["env"].update(git_commit=commit, git_dirty=dirty)
    _write(out, rec)
    lines = []
    assert not warn_other_code(str(out), echo=lines.append) and lines == []
    old = mk.make_record("resnet26-acmix", "acmix", "multigroup", "learnable", None, 0)
    old["env"].update(git_commit="0123456789" + "0" * 30, git_dirty=True)
    _write(out, old)
    assert warn_other_code(str(out), echo=lines.append)
    assert len(lines) == 1 and "warning" in lines[0] and "0123456789 (dirty): 1 cell(s)" in lines[0]
    assert "fresh --out" in lines[0]


def test_report_flags_records_from_different_commits(tmp_path):
    from reports.build import build_report

    a = mk.make_record("resnet26-conv", "conv", None, None, None, 0)
    b = mk.make_record("resnet26-acmix", "acmix", "multigroup", "learnable", None, 0)
    a["env"].update(git_commit="a" * 40, git_dirty=False)
    b["env"].update(git_commit="b" * 40, git_dirty=True)
    mk.write_set(tmp_path / "res", [a, b])
    build_report(tmp_path / "res", tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    section = md.split("## What is missing or broken", 1)[1].split("\n## ", 1)[0]
    assert "records come from 2 code versions" in section
    assert "aaaaaaaaaa: 1 cell(s)" in section and "bbbbbbbbbb (dirty): 1 cell(s)" in section
    # one code version: nothing flagged
    b["env"].update(git_commit="a" * 40, git_dirty=False)
    mk.write_set(tmp_path / "res2", [a, b])
    build_report(tmp_path / "res2", tmp_path / "out2")
    assert "code versions" not in (tmp_path / "out2" / "report.md").read_text()


def test_cli_run_prints_the_warning(tmp_path, monkeypatch):
    """The warning comes before anything runs (a dry run of a config whose OUT holds old records)."""
    import yaml

    from bench.cli import main

    out = tmp_path / "out"
    old = mk.make_record("resnet26-conv", "conv", None, None, None, 0)
    old["env"].update(git_commit="f" * 40, git_dirty=False)
    _write(out, old)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"matrix": {"backbones": ["resnet26"], "operators": ["conv"],
                                              "datasets": ["synthetic"]}, "report": False}))
    from bench.runner import execute as X

    monkeypatch.setattr(X, "run_matrix", lambda *a, **k: {"ran": 0, "skipped": 0, "status": {},
                                                          "interrupted": False})
    import bench.run_cli as RC

    monkeypatch.setattr(RC, "prepare_data", lambda cfg, echo=print: None)
    buf = io.StringIO()
    with redirect_stdout(buf):
        main(["run", str(cfg), "--out", str(out), "--no-progress"])
    text = buf.getvalue()
    assert "warning" in text and "ffffffffff: 1 cell(s)" in text
    assert json.loads((out / "plan.json").read_text())["cells"]
