"""datamodules of acmix-bench."""
