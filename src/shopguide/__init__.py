"""shopguide: train, gate and serve multi-task recommenders for e-commerce shopping guides."""

__version__ = "0.1.0"
