"""Choosing a variant per request: live statistics and the pure selector."""
