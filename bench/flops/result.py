"""CountResult (rows per stage and voice, the audit, notes) and its table and CSV forms."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..formulas import Conventions
from .stages import stage_order


@dataclass
class CountResult:
    """Per-stage params and MACs per voice (MACs per image), the audit and the conventions used."""

    rows: list[dict]                      # {stage, voice, params, macs}
    audit: list[dict] = field(default_factory=list)  # {voice, path, op, status, macs}
    conventions: Conventions = field(default_factory=Conventions)
    backward: str = "none"
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    parts: list[dict] = field(default_factory=list)  # formula terms: {module, stage, part, category, macs, counted}

    def table(self):
        import pandas as pd
        return pd.DataFrame(self.rows, columns=["stage", "voice", "params", "macs"])

    def wide(self, what: str = "macs"):
        df = self.table()
        voices = list(dict.fromkeys(df["voice"]))
        w = df.pivot(index="stage", columns="voice", values=what)
        order = [s for s in stage_order(set(df["stage"])) if s in w.index]
        return w.loc[order, voices]

    def total(self, voice: str = "formula") -> int:
        return int(self.get("total", voice))

    def get(self, stage: str, voice: str, what: str = "macs") -> int:
        for r in self.rows:
            if r["stage"] == stage and r["voice"] == voice:
                return int(r[what])
        raise KeyError(f"no row for stage {stage!r}, voice {voice!r}")

    def stages(self, voice: str) -> dict[str, int]:
        return {r["stage"]: int(r["macs"]) for r in self.rows if r["voice"] == voice}

    def audit_table(self):
        import pandas as pd
        return pd.DataFrame(self.audit, columns=["voice", "path", "op", "status", "macs"])

    def to_json(self) -> str:
        return json.dumps({"unit": "MACs per image (FLOPs = 2 MACs)", "backward": self.backward,
                           "conventions": self.conventions.as_dict(), "rows": self.rows,
                           "audit": self.audit, "notes": self.notes, "seconds": self.seconds,
                           "formula_parts": self.parts}, indent=2)


def _fmt_int(n) -> str:
    return f"{int(n):,}"


def format_table(res: CountResult, flops: bool = False) -> str:
    mult, unit = (2, "FLOPs (= 2 MACs)") if flops else (1, "MACs")
    w = res.wide("macs") * mult
    p = res.wide("params")
    voices = list(w.columns)
    lines = [f"{unit} per image, by stage and voice" + (" (training step)" if res.backward != "none" else ""),
             "conventions: " + ", ".join(f"{k}={'on' if v else 'off'}" for k, v in res.conventions.as_dict().items())]
    head = f"{'stage':<18}" + "".join(f"{v:>18}" for v in voices)
    lines += ["", head, "-" * len(head)]
    for s in w.index:
        lines.append(f"{s:<18}" + "".join(f"{_fmt_int(w.loc[s, v]):>18}" for v in voices))
    lines += ["", "Parameters by stage and voice", head, "-" * len(head)]
    for s in p.index:
        lines.append(f"{s:<18}" + "".join(f"{_fmt_int(p.loc[s, v]):>18}" for v in voices))
    if res.audit:
        lines += ["", f"Audit: Stage II ops a voice counts as zero or cannot count ({unit})"]
        for a in res.audit:
            m = "" if a["macs"] is None else _fmt_int(a["macs"] * mult)
            lines.append(f"  {a['voice']:<16} {a['path']:<40} {a['op']:<36} {a['status']:<22} {m:>14}")
    for n in res.notes:
        lines.append("note: " + n)
    return "\n".join(lines)


def format_csv(res: CountResult, flops: bool) -> str:
    out = ["stage,voice,params,macs" + (",flops" if flops else "")]
    for r in res.rows:
        out.append(f"{r['stage']},{r['voice']},{r['params']},{r['macs']}" + (f",{2 * r['macs']}" if flops else ""))
    return "\n".join(out)
