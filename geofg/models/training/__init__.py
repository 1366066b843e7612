"""Making and checking model bundles: chips, labels, training, checkpoints, search, evaluation."""
