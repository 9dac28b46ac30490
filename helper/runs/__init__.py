"""The run folder on disk: its lock, config.json and the resume policy, checkpoints, atomic files, results lines."""
