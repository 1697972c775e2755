"""Benchmarks of longtask, each printing ratios against a baseline measured in the same run.

fanout.py  django-q2 alone (raw) vs a quilt of N squares
tasks.py   django-q2 alone (raw) vs N django.tasks ``@task`` runs through LongTaskBackend
live.py    latency of live subtask events at websocket clients
raw.py     the raw django-q2 baseline that fanout.py and tasks.py measure
settings_raw.py  the raw baseline's settings (the others run on quiltsite.settings)
_lib/      processes, CPU and RSS sampling, scratch databases, sessions, tables
"""
