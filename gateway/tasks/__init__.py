"""Task-level pre/post-processing shared by the gateway and the builders' evaluation."""
