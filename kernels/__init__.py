"""Triton kernels, one module per family. Use them through fastscale.ops, which validates inputs."""
