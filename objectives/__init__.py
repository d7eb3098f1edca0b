"""sigmatune: objectives."""
