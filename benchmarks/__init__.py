"""Speed benchmarks, each run from the repository root as a module
(`python -m benchmarks.bench --help`). benchmarks.common is the helper they
and experiments/ share: the CPU name, timing, JSON output, flag handling."""
