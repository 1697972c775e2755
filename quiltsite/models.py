from django.db import models


class Invoice(models.Model):
    """Demo input data for the report kind, generated deterministically per day."""

    date = models.DateField()
    number = models.PositiveIntegerField()
    customer = models.CharField(max_length=100)
    amount_cents = models.PositiveIntegerField()
    vat_cents = models.PositiveIntegerField()
    #: Stored total (amount + VAT), recomputed by the recount kind.
    total_cents = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["date", "number"], name="invoice_unique_per_day"),
        ]
        indexes = [models.Index(fields=["date"], name="invoice_date")]

    def __str__(self) -> str:
        return f"{self.date}/{self.number}"
