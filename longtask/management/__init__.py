"""The management commands, and the terminal display they share."""
