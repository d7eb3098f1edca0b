"""sigmatune: dashboards."""
