"""Where a run executes: device and AMP set-up, seeding, every collective (DDP), host memory."""
