from django.apps import AppConfig


class QuiltsiteConfig(AppConfig):
    name = "quiltsite"
    verbose_name = "Quilt site demo"
