"""The web bench's visitors (bench/web.py runs locust with this file).

Pollers read a task's status JSON and its status page, as a browser tab on the page
does; a few starters (one user in 50) open the start page and post the quilt form (with
its CSRF token), then poll what they started. ``BENCH_WEB_MODE=bare`` makes pollers read
the baseline view instead (bench/web.py then runs pollers only). Per-user pace:
BENCH_WEB_USER_RATE requests per second (0: as fast as answers come), each user's
requests at random (Poisson) moments, as independent browser tabs poll; or, with
BENCH_WEB_PACE=constant, locust's ``constant_throughput``, whose users start together
and stay in step: 200 of them arrive in one burst every 1/rate seconds, and the burst's
drain time is then most of the latency measured (the bench's only model before
2026-12-06). Task ids: BENCH_WEB_TASKS (comma-separated).
"""

from __future__ import annotations

import os
import random
import re

from locust import FastHttpUser, between, constant, constant_throughput, poisson, task

MODE = os.environ.get("BENCH_WEB_MODE", "site")
RATE = float(os.environ.get("BENCH_WEB_USER_RATE", "2"))
PACE = os.environ.get("BENCH_WEB_PACE", "poisson")
TASKS = [t for t in os.environ.get("BENCH_WEB_TASKS", "").split(",") if t]
TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def pace():
    if RATE <= 0:
        return constant(0)
    return constant_throughput(RATE) if PACE == "constant" else poisson(RATE)


class Poller(FastHttpUser):
    weight = 49
    wait_time = pace()

    def on_start(self) -> None:
        self.task_id = random.choice(TASKS) if TASKS else ""

    @task(3)
    def status_json(self) -> None:
        if MODE == "bare":
            self.client.get("/bench/bare.json", name="bare JSON")
        else:
            self.client.get(f"/tasks/{self.task_id}.json", name="status JSON")

    @task(1)
    def status_page(self) -> None:
        if MODE == "bare":
            self.client.get("/bench/bare.json", name="bare JSON")
        else:
            self.client.get(f"/tasks/{self.task_id}/", name="status page")


class Starter(FastHttpUser):
    """Starts a small quilt now and then (no worker runs: it stays queued), polls it."""

    weight = 1
    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.started = ""

    @task
    def start_or_poll(self) -> None:
        if self.started and random.random() < 0.8:
            self.client.get(f"{self.started}.json", name="status JSON (started)")
            return
        page = self.client.get("/tasks/new/quilt/", name="start form")
        found = TOKEN.search(page.text or "")
        if not found:
            return
        with self.client.post(
            "/tasks/new/quilt/",
            data={"csrfmiddlewaretoken": found.group(1), "rows": 2, "cols": 2, "work_ms": 0},
            headers={"Referer": self.host + "/"},
            allow_redirects=False,
            name="start (POST)",
            catch_response=True,
        ) as response:
            if response.status_code == 303:
                self.started = response.headers["Location"].rstrip("/")
                response.success()
            else:
                response.failure(f"start answered {response.status_code}")
