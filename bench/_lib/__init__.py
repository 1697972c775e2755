"""What the benchmarks share: processes, sampling, scratch databases, sessions, tables."""
