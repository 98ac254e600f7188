"""acmix-bench: runner, FLOPs counting and matching, timing, CLI."""
