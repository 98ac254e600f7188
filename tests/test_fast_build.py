"""The C++ kernels' build directory: sources staged by content, so checkouts share one build."""
from __future__ import annotations

import os

from modules import _fast


def test_sources_are_staged_once_and_refreshed_on_change(tmp_path):
    dest = _fast._stage_sources("local_attention", tmp_path / "src")
    names = set(_fast.KERNELS["local_attention"]) | {p.name for p in _fast._DIR.glob("*.h")}
    assert {p.name for p in dest.iterdir()} == names
    for n in names:
        assert (dest / n).read_bytes() == (_fast._DIR / n).read_bytes()
    f = dest / "simd.h"
    os.utime(f, (1_000_000, 1_000_000))
    _fast._stage_sources("local_attention", dest)
    assert f.stat().st_mtime == 1_000_000  # same content: untouched, so ninja rebuilds nothing
    f.write_text("// stale\n")
    _fast._stage_sources("local_attention", dest)
    assert f.read_bytes() == (_fast._DIR / "simd.h").read_bytes()
    assert not [p for p in dest.iterdir() if p.name.endswith(".tmp")]


def test_build_compiles_from_the_staged_copies(monkeypatch, tmp_path):
    """cpp_extension.load gets the copies in the keyed build directory, never this checkout's paths."""
    seen = {}

    def fake_load(name, sources, build_directory, **kw):
        seen.update(name=name, sources=sources, build_directory=build_directory)
        return object()

    from torch.utils import cpp_extension
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setenv("ACMIX_BENCH_CACHE", str(tmp_path))
    _fast._build("conv_path")
    key = _fast.source_key("conv_path")
    assert seen["build_directory"] == str(tmp_path / f"conv_path_{key}")
    assert seen["sources"] == [str(tmp_path / f"conv_path_{key}" / "src" / f) for f in _fast.KERNELS["conv_path"]]
    assert "conv_path.cpp" in _fast.KERNELS["conv_path"]


def test_each_torch_installation_has_its_own_build(monkeypatch, tmp_path):
    """Two virtual environments share the cache directory but not a build: the build files name torch's
    paths, so a shared one would be recompiled by each environment in turn."""
    import torch

    here = _fast.source_key("conv_path")
    assert _fast.source_key("conv_path") == here
    other = tmp_path / "venv" / "torch"
    other.mkdir(parents=True)
    monkeypatch.setattr(torch, "__file__", str(other / "__init__.py"))
    assert _fast.source_key("conv_path") != here
