"""The KServe v2 gRPC transport."""
