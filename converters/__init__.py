"""framedelta.converters: PyTorch (torch.export) -> framedelta graph -> model file."""
