"""Django's own sample tasks (Django 6.1.3's tests/tasks/tasks.py), for the conformance tests."""
