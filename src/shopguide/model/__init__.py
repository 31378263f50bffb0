"""Multi-task models and their on-disk format."""
