"""One training run: the typed config, the step and loop, checkpoints and plots."""
