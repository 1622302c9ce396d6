"""Training: losses, the train loop, checkpoints, the Ray Train wrapper and the `train` stage."""
