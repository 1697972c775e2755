"""A bench-only app: the no-op fan-out kind of bench/scale.py (see bench.settings_scale)."""
