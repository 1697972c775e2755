"""The state machine: every change of a task's or a subtask's status, in one module.

Each transition is one conditional UPDATE from the statuses in ``TASK_TRANSITIONS`` or
``SUBTASK_TRANSITIONS`` (docs/guarantees shows both tables). No other code writes
``status``. Three rules hold throughout:

- **Fencing.** A run (a task's attempt, a chunk of subtasks) carries the token it got
  when it claimed its rows; every write it makes is conditional on that token. A run
  that lost its rows (the sweeper re-queued it while it was slow but alive, a retry
  reset them) has its writes refused, and the refusal is logged.
- **Counters move by what moved**: a parent's ``subtasks_done``/``subtasks_failed`` move
  by the rowcount of the UPDATE that moved its subtasks, in the same transaction,
  under the parent's row lock (every writer that moves a RUNNING subtask takes it).
- **Dispatch with the change**: a job a transition needs is handed to the broker in
  the same transaction (the ORM broker's queue is a table: it commits with the row; on
  Redis it is pushed after the commit and the sweeper re-dispatches a lost one).
"""

from longtask.engine.states.actions import cancel, requeue
from longtask.engine.states.common import (
    CLAIMABLE,
    DUE_TOLERANCE,
    SUBTASK_TRANSITIONS,
    TASK_TRANSITIONS,
    Failure,
    Run,
    Transition,
    new_token,
)
from longtask.engine.states.fanout import finish_split, save_split_batch, start_fan_in
from longtask.engine.states.outcomes import Outcome, Recorded, record
from longtask.engine.states.statements import insert
from longtask.engine.states.subtasks import (
    Claimed,
    abandon_subtasks,
    beat_subtasks,
    claim_subtasks,
    give_back,
    redispatched,
    reset_subtasks,
    skip_subtasks,
    stop_subtasks,
)
from longtask.engine.states.tasks import (
    beat,
    claim,
    continue_later,
    defer,
    fail,
    finish_cancelled,
    holds,
    move_cursor,
    schedule_retry,
    succeed,
)

__all__ = [
    "CLAIMABLE",
    "DUE_TOLERANCE",
    "SUBTASK_TRANSITIONS",
    "TASK_TRANSITIONS",
    "Claimed",
    "Failure",
    "Outcome",
    "Recorded",
    "Run",
    "Transition",
    "abandon_subtasks",
    "beat",
    "beat_subtasks",
    "cancel",
    "claim",
    "claim_subtasks",
    "continue_later",
    "defer",
    "fail",
    "finish_cancelled",
    "finish_split",
    "give_back",
    "holds",
    "insert",
    "move_cursor",
    "new_token",
    "record",
    "redispatched",
    "requeue",
    "reset_subtasks",
    "save_split_batch",
    "schedule_retry",
    "skip_subtasks",
    "start_fan_in",
    "stop_subtasks",
    "succeed",
]
