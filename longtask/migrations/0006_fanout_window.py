from typing import Any

from django.db import migrations, models
from django.db.models import F


def dispatched_already(apps: Any, schema_editor: Any) -> None:
    # Fan-outs split before the window had every subtask queued at their split.
    LongTask = apps.get_model("longtask", "LongTask")
    LongTask.objects.update(dispatched_upto=F("subtasks_total"))


class Migration(migrations.Migration):
    dependencies = [("longtask", "0005_task_minutes")]

    operations = [
        migrations.AddField(
            model_name="longtask",
            name="dispatched_upto",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunPython(dispatched_already, migrations.RunPython.noop),
    ]
