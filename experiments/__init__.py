"""Quality sweeps, the README's figures and parity checks, each run from the
repository root as a module (`python -m experiments.recipes --help`). They
share benchmarks.common with the speed benchmarks."""
