"""Mixing by depth for every family with learnable mixing (ResNet, SAN, PVT, Swin ACmix): what the runner
records (`mixing_weights`, stored as a record's mixing_by_depth) and the report's table and figure."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bench.runner.records import validate_record
from modules import create_model
from modules.lightning import mixing_weights
from modules.operators import ACmix, WindowACmix
from modules.pvt_attention import SRACmix
from modules.san import SANACmix
from reports import plots
from reports.tables import mixing_table, model_family

FIX = Path(__file__).parent / "fixtures" / "records"
_spec = importlib.util.spec_from_file_location("make_records", FIX / "make_records.py")
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)

SMALL = {  # small-stem sizes, as in the Fashion-MNIST matrix
    "resnet26-acmix": dict(stem="small", img_size=28, in_chans=1, num_classes=10, width_mult=0.25),
    "san10-acmix": dict(stem="small", img_size=28, in_chans=1, num_classes=10, widths=[32, 32, 64, 64, 128]),
    "pvt_t-acmix": dict(stem="small", img_size=32, in_chans=1, num_classes=10, width_mult=0.25),
    "swin_micro-acmix": dict(img_size=32, in_chans=1, num_classes=10),
}
ACMIX_TYPES = (ACmix, SANACmix, SRACmix, WindowACmix)


@pytest.mark.parametrize("name", list(SMALL))
def test_runner_records_mixing_of_every_acmix_layer(name):
    model = create_model(name, **SMALL[name])
    ops = [n for n, m in model.named_modules() if isinstance(m, ACMIX_TYPES)]
    assert ops, name
    with torch.no_grad():  # a trained value must come through, not the 0.5 of the initialisation
        model.get_submodule(ops[-1]).stage2.alpha.fill_(0.8)
        model.get_submodule(ops[0]).stage2.beta.fill_(-0.3)
    rows = mixing_weights(model)
    assert [r["layer"] for r in rows] == ops
    assert [r["depth"] for r in rows] == list(range(len(ops)))
    assert rows[-1]["alpha"] == pytest.approx(0.8) and rows[0]["beta"] == pytest.approx(-0.3)
    assert all(r["alpha"] == 0.5 for r in rows[:-1]) and all(r["beta"] == 0.5 for r in rows[1:])
    rec = mk.make_record(name, "acmix", "multigroup", "learnable", None, 0)
    rec["mixing_by_depth"] = rows
    validate_record(rec)  # what the runner writes passes its own validator
    fixed = create_model(name, mixing="half", **SMALL[name])
    assert [r["alpha"] for r in mixing_weights(fixed)] == [0.5] * len(ops)  # fixed mixings are recorded too


def test_model_family_from_names():
    assert [model_family(n) for n in ("resnet26-acmix", "san19-acmix", "pvt_s-acmix", "swin_t-acmix", "swin_micro-sa")] \
        == ["resnet", "san", "pvt", "swin", "swin"]


def test_mixing_plot_has_a_row_per_family():
    records = []
    for name in SMALL:
        rows = mixing_weights(create_model(name, **SMALL[name]))
        for seed in (0, 1):
            rec = mk.make_record(name, "acmix", "multigroup", "learnable", None, seed)
            rec["mixing_by_depth"] = [dict(r, alpha=r["alpha"] + 0.1 * seed * r["depth"]) for r in rows]
            records.append(rec)
    extra = mk.make_record("resnet26-acmix", "acmix", "tensor", "learnable", None, 0)  # a second ResNet series
    extra["mixing_by_depth"] = mixing_weights(create_model("resnet26-acmix", **SMALL["resnet26-acmix"]))
    records.append(extra)
    tab = mixing_table(records)
    assert set(tab["family"]) == {"resnet", "san", "pvt", "swin"}
    depths = tab.groupby("label")["depth"].max() + 1
    for name in SMALL:
        assert depths[f"{name} [multigroup, learnable]"] == len(mixing_weights(create_model(name, **SMALL[name])))
    fig = plots.mixing(tab)
    axes = fig.get_axes()
    assert len(axes) == 12  # 4 families x (|alpha|, |beta|, log ratio)
    titles = [ax.get_title() for ax in axes]
    for i, fam in enumerate(("ResNet-ACmix", "SAN-ACmix", "PVT-ACmix", "Swin-ACmix")):  # the paper's order
        assert titles[3 * i].startswith(fam) and "log|alpha/beta|" in titles[3 * i + 2]
    assert len(axes[0].get_legend().get_texts()) == 2  # ResNet: two configurations
    assert len(axes[3].get_legend().get_texts()) == 1
    plots.plt.close(fig)
