"""Datasets to loaders: the seeded resumable sampler, CPU loaders, device-resident data."""
