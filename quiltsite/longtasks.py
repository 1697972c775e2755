"""The demo site's kinds of long task (importing the modules registers them)."""

from quiltsite import quilt, recount, report

__all__ = ["quilt", "recount", "report"]
