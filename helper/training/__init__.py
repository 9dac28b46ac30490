"""The training loop: the epoch driver (trainer), the train/validate steps (engine), schedules, timing, signals."""
