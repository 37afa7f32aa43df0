"""Helpers shared by the tests: tiny videos, CLI runs, clusters, faults, the reliability table."""
