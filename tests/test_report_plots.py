"""Throughput-vs-MACs figure: one line per (family, operator variant) across a family's depths."""
import pandas as pd

from reports import plots


def _summary():
    rows = []
    for bb, macs, tp in (("resnet26", 2.3e9, 300.0), ("resnet38", 2.9e9, 240.0), ("resnet50", 3.6e9, 200.0),
                         ("san10", 1.9e9, 150.0), ("san15", 2.7e9, 110.0), ("pvt_t", 2.0e9, 400.0),
                         ("swin_t", 4.6e9, 180.0)):
        for op, f in (("acmix", 1.0), ("sa", 1.2)):
            rows.append({"backbone": bb, "op": op, "shift": "multigroup" if op == "acmix" else None,
                         "mixing": "learnable" if op == "acmix" else None, "macs": macs * f,
                         "infer_samples_per_s": tp / f, "infer_samples_per_s_iqr": 4.0,
                         "train_samples_per_s": tp / f / 3, "train_samples_per_s_iqr": 2.0, "speed_on": "cpu x2"})
    return pd.DataFrame(rows)


def test_family_of():
    assert [plots.family_of(b) for b in ("resnet26", "swin_t", "pvt_s", "san19", "swin_mini")] == \
        ["resnet", "swin", "pvt", "san", "swin"]


def test_throughput_lines_per_family_and_operator():
    fig = plots.throughput_vs_macs(_summary())
    assert fig is not None and len(fig.axes) == 2
    ax = fig.axes[0]
    # errorbar containers: resnet x2 ops (3 points each), san x2 (2 points), pvt x2, swin x2 (1 point)
    sizes = sorted(len(c.lines[0].get_xdata()) for c in ax.containers)
    assert sizes == [1, 1, 1, 1, 2, 2, 3, 3]
    styles = {len(c.lines[0].get_xdata()): c.lines[0].get_linestyle() for c in ax.containers}
    assert styles[3] == "-" and styles[2] == "--" and styles[1] == "None"
    assert "san --" in ax.get_title() and "pvt :" in ax.get_title()
