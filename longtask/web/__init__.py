"""The web pages and JSON endpoints of a task."""
