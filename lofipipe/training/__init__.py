"""Training: what a Ray Train worker runs (plain PyTorch), and the files a run keeps."""
