"""Readings on their way out: typed and timestamped, then joined into batches."""
