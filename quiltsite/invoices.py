"""Deterministic demo invoices: the same day always has the same invoices."""

from __future__ import annotations

import datetime
import random

from quiltsite.models import Invoice

CUSTOMERS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell"]
VAT_RATE_PERCENT = 19


def invoices_for(day: datetime.date) -> list[Invoice]:
    """Build (unsaved) the invoices of ``day``, seeded by the date."""
    rng = random.Random(day.toordinal())
    count = rng.randint(5, 40) if day.weekday() < 5 else rng.randint(0, 5)
    invoices = []
    for number in range(1, count + 1):
        amount = rng.randint(1_000, 500_000)
        vat = amount * VAT_RATE_PERCENT // 100
        invoices.append(
            Invoice(
                date=day,
                number=number,
                customer=rng.choice(CUSTOMERS),
                amount_cents=amount,
                vat_cents=vat,
                total_cents=amount + vat,
            )
        )
    return invoices


def ensure_invoices(day: datetime.date) -> None:
    """Seed the invoices of ``day`` once; re-running changes nothing."""
    if not Invoice.objects.filter(date=day).exists():
        Invoice.objects.bulk_create(invoices_for(day), ignore_conflicts=True)
