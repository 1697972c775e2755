"""TaskMinute's counters lose the ``>= 0`` CHECK of a positive field.

They are written only by longtask.engine.states.tallies, which refuses negative amounts;
PostgreSQL rebuilt the 17 checks for every statement that counts (two per run).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("longtask", "0007_narrower_subtask_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="taskminute",
            name="cancelled",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="failed",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="retried",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="runs",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="runs_le_1",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="runs_le_14400",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="runs_le_15",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="runs_le_300",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="runs_le_3600",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="runs_le_5",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="runs_le_60",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="runs_le_900",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="started",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="subtasks_done",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="subtasks_failed",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskminute",
            name="succeeded",
            field=models.BigIntegerField(default=0),
        ),
    ]
