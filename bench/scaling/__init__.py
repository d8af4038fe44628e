"""Scaling benchmark: generation throughput vs. worker processes under one rate limit."""
