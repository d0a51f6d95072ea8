"""framedelta.engine: graph executor, kernels, numpy references."""
