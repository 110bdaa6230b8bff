"""CycleGAN loss-ablation pipeline: data, models, losses, training, evaluation, tracking, flows."""

__version__ = "0.1.0"
