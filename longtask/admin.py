from __future__ import annotations

from django.contrib import admin

from longtask.models import LongTask


@admin.register(LongTask)
class LongTaskAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "name", "status", "owner", "attempts", "created_at"]
    list_filter = ["status", "kind", "queue"]
    search_fields = ["id", "name", "owner__username"]
    readonly_fields = [
        "id",
        "kind",
        "status",
        "result",
        "error",
        "traceback",
        "attempts",
        "last_progress",
        "created_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "result_viewed_at",
    ]
