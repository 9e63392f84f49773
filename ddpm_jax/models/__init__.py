"""Flax NNX networks. Each is built from plain arguments (never a config
object) and applied as a pure function of its `nnx.split` parameters."""
