"""sigmatune: study."""
