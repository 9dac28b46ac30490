"""Teachers (and students) from files: loading and architecture inference, official conversion, the published-teacher
registry, the BatchNorm-folded inference copy."""
