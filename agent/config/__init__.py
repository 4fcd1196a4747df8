"""The config file: its schema, loading and the problems it can have."""
