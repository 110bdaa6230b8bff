"""CycleGAN training: networks, the objective, the history pool, the step, the loop and its checkpoints."""
