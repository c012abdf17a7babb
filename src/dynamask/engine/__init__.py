"""Training, evaluation and prediction around the models."""
