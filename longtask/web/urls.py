"""The pages and JSON endpoints (included by ``longtask.urls``)."""

from django.urls import path

from longtask.web import dashboard, metrics, views, yours

urlpatterns = [
    path("", views.index, name="index"),
    path("tasks/", yours.your_tasks_page, name="yours"),
    path("tasks/live.json", yours.your_tasks_json, name="yours_json"),
    path("tasks/new/<slug:kind>/", views.new_task, name="new"),
    path("tasks/<uuid:task_id>/", views.status, name="status"),
    path("tasks/<uuid:task_id>.json", views.status_json, name="status_json"),
    path("tasks/<uuid:task_id>/subtasks.json", views.subtasks_json, name="subtasks_json"),
    path("tasks/<uuid:task_id>/download/", views.download, name="download"),
    path("tasks/<uuid:task_id>/cancel/", views.cancel, name="cancel"),
    path("tasks/ops/", dashboard.dashboard, name="ops"),
    path("tasks/ops/<uuid:task_id>/retry/", dashboard.retry, name="ops_retry"),
    path("tasks/ops/<uuid:task_id>/cancel/", dashboard.cancel, name="ops_cancel"),
    path("metrics", metrics.metrics, name="metrics"),
]
