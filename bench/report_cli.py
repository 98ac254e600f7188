"""`acmix-bench report RESULTS_DIR [--compare OTHER_DIR] [--out DIR]`: tables, plots, claims from records."""
from __future__ import annotations

import sys
from pathlib import Path


def plan_from_config(path) -> list[dict]:
    """The cells a matrix config plans, through the runner's own expansion."""
    from bench.runner.cells import expand
    from bench.runner.config import load_config

    return [dict(c) for c in expand(load_config(path, check_registry=False))]


def run(args) -> int:
    from reports.build import STATUS_MARK, build_report

    from reports.records import report_section_of

    planned = plan_from_config(args.matrix) if args.matrix is not None else None
    report_config = report_section_of(args.matrix) if args.matrix is not None else None
    written, rep = build_report(args.results_dir, args.out, args.compare, planned, args.margin, report_config)
    out = Path(written["report.md"]).parent
    rs = rep.rs
    n_bad = int((rep.frame["status"] != "ok").sum())
    print(f"acmix-bench report: {len(rs.records)} records from {rs.root} ({n_bad} not ok, "
          f"{len(rs.problems)} unreadable, {len(rs.missing())} planned but missing)")
    for f, why in rs.problems:
        print(f"  warning: skipped {f}: {why}", file=sys.stderr)
    print(f"  claims (95% CI, equivalence margin {rep.margin:g} top-1 points):")
    for c in rep.claims:
        print(f"  {STATUS_MARK[c.status]:<10} {c.statement}")
    if rep.base is not None:
        cd = rep.csv["compare_cells"]
        flagged = int((cd["flags"] != "").sum()) if len(cd) else 0
        print(f"  compared with {rep.base.root}: {len(cd)} matching cells, {flagged} with changes beyond noise")
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'claims.json'}, {len([k for k in written if k.startswith('tables/')])} "
          f"tables, {len([k for k in written if k.startswith('plots/')])} plot files")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="build report.md/report.html, tables and plots from a result directory")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="OUT directory of `acmix-bench run` (holds cells/*.json)")
    p.add_argument("--compare", metavar="OTHER_DIR", default=None,
                   help="another result directory: deltas per matching cell, flagged beyond the measured noise")
    p.add_argument("--out", metavar="DIR", default=None, help="where to write the report (default RESULTS_DIR/report)")
    p.add_argument("--matrix", metavar="CONFIG", default=None,
                   help="the matrix config the results came from: the report then lists planned cells with no record")
    p.add_argument("--margin", metavar="POINTS", type=float, default=None,
                   help="equivalence margin in top-1 points for the verdicts (default: the config's report.margin "
                        "recorded in plan.json or given by --matrix, else 0.5)")
    p.set_defaults(func=run)
