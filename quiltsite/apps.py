from pathlib import Path

from django.apps import AppConfig
from django.conf import settings


class QuiltsiteConfig(AppConfig):
    name = "quiltsite"
    verbose_name = "Quilt site demo"

    def ready(self) -> None:
        # The folders the site writes to at run time (database, cache, collected static
        # files), made once the settings are read rather than while they are imported.
        for folder in (settings.DATA_DIR, settings.STATIC_ROOT):
            Path(folder).mkdir(parents=True, exist_ok=True)
