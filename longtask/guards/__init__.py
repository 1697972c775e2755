"""Guards: who may see and start what (access), abuse limits, and size limits."""
