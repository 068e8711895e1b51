"""Stage 6, features: information-driven bars (AFML ch. 2), their Numba kernels, and their incremental upkeep."""
