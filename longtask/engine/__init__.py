"""The engine: runs, fan-out and fan-in, retries and recovery, on one fenced state machine.

It imports nothing above it (no api, views, CLI or admin); ``engine.states`` is the only
module that writes a status.
"""
