"""The tutorial's kinds: count the primes below a limit, in one run, then fanned out.

In a project this file is an installed app's ``longtasks.py``: longtask imports every
app's ``longtasks.py`` at start-up (as Django does ``admin.py``), and ``@longtask.register``
makes each kind startable by its name. tests/test_docs.py imports this very file and
runs both kinds, so the tutorial's code is the code that was tested.
"""

import math

from django import forms

import longtask

#: Numbers per block: a block is one progress step, or one subtask of the fan-out.
BLOCK = 100_000


def count_primes(start, stop):
    """Count the primes p with start <= p < stop (a sieve of that segment)."""
    start = max(start, 2)
    if stop <= start:
        return 0
    is_prime = bytearray([1]) * (stop - start)
    for p in range(2, math.isqrt(stop - 1) + 1):
        first = max(p * p, -(-start // p) * p)  # the first multiple of p to strike out
        is_prime[first - start :: p] = bytes(len(range(first, stop, p)))
    return sum(is_prime)


class PrimesForm(forms.Form):
    limit = forms.IntegerField(min_value=2, max_value=50_000_000, initial=1_000_000)


@longtask.register
class CountPrimes(longtask.Kind):
    name = "primes"
    title = "Count primes"
    description = "Counts the primes below a limit, a block of numbers at a time."
    form_class = PrimesForm  # bad parameters never reach a worker

    def run(self, task, params):
        limit, found = params["limit"], 0
        for start in range(0, limit, BLOCK):
            stop = min(start + BLOCK, limit)
            found += count_primes(start, stop)
            task.progress(stop, limit, f"{found:,} primes below {stop:,}")
        return {"limit": limit, "primes": found}  # JSON, stored on the task's row


@longtask.register
class CountPrimesFannedOut(longtask.FanOutKind):
    name = "primes-fanout"
    title = "Count primes, fanned out"
    description = "The same count, one subtask per block, run by many workers at once."
    form_class = PrimesForm

    def split(self, params):
        limit = params["limit"]
        for start in range(0, limit, BLOCK):
            yield {"start": start, "stop": min(start + BLOCK, limit)}

    def run_subtask(self, params):
        # May run twice for one block (a worker can die after the work and before the
        # bookkeeping): it only computes, so running it again is harmless.
        return count_primes(params["start"], params["stop"])

    def gather(self, task, results):
        # Runs once, when every block is counted; results come in split order.
        return {"limit": task.parameters["limit"], "primes": sum(results)}
