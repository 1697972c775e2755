"""IterativeKind: every row of a queryset, one batch per job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from django.db.models import Model, QuerySet

from longtask.kinds.base import Kind
from longtask.serialize import JSON, JSONObject

if TYPE_CHECKING:
    from longtask.models import LongTask


class IterativeKind[M: Model](Kind):
    """A kind that processes every row of a queryset, one batch per job.

    ``M`` is the rows' model, for the type checker: ``class Walk(IterativeKind[Book])``.
    """

    #: Rows per batch (the fetch asks for one more, to know whether more remain).
    batch_size: ClassVar[int] = 1000
    #: Stop a batch early after this many seconds and continue in the next job.
    soft_deadline: ClassVar[float | None] = None
    #: A unique, ordered field to walk by (the keyset cursor).
    cursor_field: ClassVar[str] = "pk"

    def queryset(self, params: JSONObject) -> QuerySet[M]:
        """Return the rows to walk (ordering is applied by the walker)."""
        raise NotImplementedError

    def process(self, task: LongTask, rows: Sequence[M], params: JSONObject) -> None:
        """Process some rows; runs inside the transaction that moves the cursor."""
        raise NotImplementedError

    def finish(self, task: LongTask, params: JSONObject) -> JSON:
        """Return the task's result once every row is done."""
        return {"rows": task.rows_done}

    def run(self, task: LongTask, params: JSONObject) -> JSON:
        raise TypeError("an iterative kind runs batch by batch, not through run")
