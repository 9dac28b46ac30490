"""Training infrastructure shared by every script: engine, checkpoints, schedules, logging, devices."""
