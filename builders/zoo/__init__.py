"""The model zoo: seeded training recipes, committed checkpoints and held-out sets."""
