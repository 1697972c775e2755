"""Recount: recompute the stored total of every invoice, batch by batch."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from django import forms
from django.db.models import QuerySet

import longtask
from longtask import IterativeKind
from longtask.models import LongTask
from quiltsite.models import Invoice


class RecountForm(forms.Form):
    year = forms.IntegerField(min_value=1900, max_value=2099, required=False)
    work_ms = forms.IntegerField(
        label="Work per batch (ms)", min_value=0, max_value=5000, initial=0, required=False
    )

    def clean_work_ms(self) -> int:
        return self.cleaned_data["work_ms"] or 0


@longtask.register
class Recount(IterativeKind):
    name = "recount"
    title = "Recount invoices"
    description = "Recomputes the stored total of every invoice, a batch of rows per job."
    form_class = RecountForm
    order = 30
    batch_size = 1000
    soft_deadline = 20.0

    def queryset(self, params: dict[str, Any]) -> QuerySet:
        invoices = Invoice.objects.all()
        if params.get("year"):
            invoices = invoices.filter(date__year=params["year"])
        return invoices.only("pk", "amount_cents", "vat_cents", "total_cents")

    def process(self, task: LongTask, rows: Sequence[Invoice], params: dict[str, Any]) -> None:
        for invoice in rows:
            invoice.total_cents = invoice.amount_cents + invoice.vat_cents
        Invoice.objects.bulk_update(rows, ["total_cents"])
        if params["work_ms"]:
            time.sleep(params["work_ms"] / 1000 / 10)  # process() sees a tenth of a batch
