"""The ``digits`` family: a small CNN trained on scikit-learn's 8×8 handwritten digits."""
