"""sigmatune: models."""
