"""reports of acmix-bench."""
