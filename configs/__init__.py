"""The shipped configs: `--config NAME` takes any of these files by name."""
