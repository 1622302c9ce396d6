"""Training: losses, the train loop, resumable epoch state, the Ray Train wrapper and the `train` stage."""
