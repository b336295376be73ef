"""Builders: turn trained models into ladders of size variants in a Triton repository."""
