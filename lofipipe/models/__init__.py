"""Video encoders (plain PyTorch), chosen by name from `registry.ENCODERS`."""
