"""The training engine: one Trainer for every model family, checkpoints, devices, logging."""
