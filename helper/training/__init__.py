"""The training loop: trainer.py (the epoch driver), engine.py (the train/validate steps), optim.py (optimizers),
state.py (what a checkpoint holds of a run in progress), log.py, schedule.py, timing.py, signals.py."""
