"""Reports of acmix-bench: read result records (never live models) and write tables, plots, claims, comparisons.

- schema.py: the record schema (fields, statuses, validate_record), shared with the runner; standard library only
- records.py: OUT/cells/*.json -> ResultSet (records, unreadable files with reasons, planned cells) and a flat frame
- tables.py: per cell, per configuration (mean/std/n over seeds), per stage, per counter voice, matched groups,
  shift implementations, mixing weights by depth
- claims.py: the paper's claims, each held / not held / not enough data with the deciding numbers
- compare.py: two result sets, deltas per matching cell, flags beyond the measured noise
- plots.py: matplotlib figures; build.py: report.md + self-contained report.html + CSV/PNG/SVG
- browser.py: load an HTML file in headless Chromium and report images, console errors, requests

Entry point: `acmix-bench report RESULTS_DIR` (bench/report_cli.py) or reports.build.build_report().
"""
