"""The KServe v2 HTTP/REST transport."""
