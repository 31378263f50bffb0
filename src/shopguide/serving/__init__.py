"""Online serving: the KServe predictor and its request schema."""
