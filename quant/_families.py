"""Imports every kernel family module so that each registers its kernels (one line per family)."""
