"""Triton helpers: the python-backend flavour of a repository and a server launcher."""
