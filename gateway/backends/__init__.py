"""Where graphs run: the backend protocol and its implementations."""
