"""Shared test settings."""

from hypothesis import settings

# CI must be reproducible: hypothesis explores the same examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("ci")
