"""FLOPs matching: achieved MACs within tol of the reference, head divisibility, clear errors, CLI csv."""
from __future__ import annotations

import pytest

from bench import cli
from bench.flops import build_model, count_model
from bench.match import match_widths, model_macs

SMALL = {"stem": "small"}


def test_match_within_tol_and_divisible_by_heads():
    target = model_macs("resnet26-conv", 16, **SMALL, widths=[32, 64, 128, 256])
    (r,) = match_widths(target, ["resnet26-acmix"], 16, tol=0.01, overrides=SMALL)
    assert r.target_macs == target
    assert abs(r.macs - target) <= 0.01 * target and abs(r.rel_error) <= 0.01
    assert all(w % 4 == 0 for w in r.widths)
    # the achieved count is the fvcore voice's too (true Stage II costs)
    model = build_model("resnet26-acmix", 16, widths=r.widths, **SMALL)
    res = count_model(model, input_size=(3, 16, 16), voices=("formula", "fvcore"))
    assert res.total("fvcore") == r.macs


def test_match_impossible_is_a_clear_error():
    with pytest.raises(ValueError, match="smallest widths"):
        match_widths(1000, ["resnet26-sa"], 16, overrides=SMALL)
    with pytest.raises(ValueError, match="tol"):
        match_widths(10**9, ["resnet26-sa"], 16, tol=0)
    with pytest.raises(ValueError, match="registry"):
        match_widths(10**9, ["torchvision:resnet18"], 16)


def test_match_cli_csv(capsys):
    rc = cli.main(["match", "--reference", "resnet26-conv", "--variants", "resnet26-dconv", "--size", "16",
                   "--stem", "small", "--tol", "0.02", "--format", "csv"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "model,target_macs,macs,rel_error,widths"
    model, target, macs, rel, widths = lines[1].split(",")
    assert model == "resnet26-dconv" and abs(float(rel)) <= 0.02
    assert abs(int(macs) - int(target)) <= 0.02 * int(target) and len(widths.split()) == 4
    assert cli.main(["match", "--reference", "resnet26-conv", "--variants", "nope-model", "--size", "16"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_match_uses_in_chans():
    one = model_macs("resnet26-conv", 16, stem="small", in_chans=1, widths=[8, 8, 8, 8])
    three = model_macs("resnet26-conv", 16, stem="small", widths=[8, 8, 8, 8])
    assert three - one == 2 * 3 * 3 * 8 * 16 * 16  # the small stem's 3x3 conv sees 2 fewer input channels
