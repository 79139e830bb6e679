"""Benchmarks: scripts that print a table and write JSON. Speed targets live here, never in tests."""
