from __future__ import annotations

import os

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class LongtaskConfig(AppConfig):
    name = "longtask"
    verbose_name = "Long tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Like admin.py: every installed app's longtasks.py registers its kinds.
        autodiscover_modules("longtasks")
        from longtask import (
            backends,  # noqa: F401  (resolves the kinds of django.tasks functions)
            checks,  # noqa: F401  (registers the system checks)
        )
        from longtask.dispatch import taken

        taken.note_jobs()  # a worker's claim takes its job from the ORM broker's table
        if os.environ.get("LONGTASK_SUPERVISOR_FD"):  # a process of a supervised cluster
            from longtask.dispatch import cluster

            cluster.note_recycles()
