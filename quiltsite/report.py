"""The monthly report: the seeds' long task, stepping through the days of a month."""

from __future__ import annotations

import calendar
import csv
import datetime
import io
import time
from typing import Any

from django import forms
from django.core.validators import RegexValidator
from django.db.models import Count, Sum
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import SafeString

import longtask
from longtask.kinds import Download
from longtask.models import LongTask
from quiltsite.invoices import ensure_invoices
from quiltsite.models import Invoice

REPORT_HEADER = ["date", "invoices", "net", "vat", "gross"]


def last_month() -> str:
    """The month before today's (YYYY-MM): the report's default."""
    first_of_this_month = timezone.localdate().replace(day=1)
    return (first_of_this_month - datetime.timedelta(days=1)).strftime("%Y-%m")


class ReportForm(forms.Form):
    month = forms.CharField(
        max_length=7,
        initial=last_month,
        help_text="YYYY-MM, e.g. 2026-10",
        validators=[RegexValidator(r"^(19|20)\d\d-(0[1-9]|1[0-2])$", "Enter a month as YYYY-MM.")],
    )
    work_ms = forms.IntegerField(
        label="Work per day (ms)",
        min_value=0,
        max_value=5000,
        initial=50,
        required=False,
        help_text="Simulated work per day of the month.",
    )

    def clean_work_ms(self) -> int:
        value = self.cleaned_data["work_ms"]
        return 50 if value is None else value


def euros(cents: int) -> str:
    return f"{cents / 100:.2f}"


@longtask.register
class MonthlyReport(longtask.Kind):
    name = "report"
    title = "Monthly report"
    description = "Sums up a month of invoices, day by day, into a CSV report."
    form_class = ReportForm
    order = 20
    stylesheet = "quiltsite/report.css"  # the result's table

    def run(self, task: LongTask, params: dict[str, Any]) -> dict[str, Any]:
        year, month = map(int, params["month"].split("-"))
        days = calendar.monthrange(year, month)[1]
        total_steps = days + 2
        rows, so_far = [], 0
        for day_number in range(1, days + 1):
            day = datetime.date(year, month, day_number)
            task.progress(day_number - 1, total_steps, f"Handling {day}: so far {so_far} invoices")
            ensure_invoices(day)
            totals = Invoice.objects.filter(date=day).aggregate(
                n=Count("id"), net=Sum("amount_cents"), vat=Sum("vat_cents")
            )
            time.sleep(params["work_ms"] / 1000)
            so_far += totals["n"]
            rows.append([str(day), totals["n"], totals["net"] or 0, totals["vat"] or 0])
        task.progress(days, total_steps, "Summing up")
        sums = [sum(row[i] for row in rows) for i in (1, 2, 3)]
        task.progress(days + 1, total_steps, "Formatting")
        table = [[date, n, euros(net), euros(vat), euros(net + vat)] for date, n, net, vat in rows]
        table.append(["total", sums[0], euros(sums[1]), euros(sums[2]), euros(sums[1] + sums[2])])
        task.progress(total_steps, total_steps, "Done")
        return {"month": params["month"], "header": REPORT_HEADER, "rows": table}

    def display_result(self, task: LongTask) -> SafeString:
        return render_to_string("quiltsite/report_result.html", {"result": task.result})

    def download(self, task: LongTask) -> Download:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(task.result["header"])
        writer.writerows(task.result["rows"])
        return Download(f"report-{task.result['month']}.csv", "text/csv", out.getvalue())
