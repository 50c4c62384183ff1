"""pytest fixtures for the cluster tiers (filled in by the cluster work)."""
