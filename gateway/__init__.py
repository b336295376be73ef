"""Variant-routing model gateway speaking the KServe v2 protocol."""
