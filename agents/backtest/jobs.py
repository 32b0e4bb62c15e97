"""Background jobs of the backtest agent (fetch jobs, backtest runs): asyncio tasks by
id, at most `slots` at a time, picked up again after a restart."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from common.clients import Agents

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobRunner(ABC):
    """Runs `run(id)` as a task per id. Subclasses say what a job is (`run`) and which
    ones a stopped process left unfinished (`unfinished`)."""

    kind = "job"

    def __init__(self, sessions: sessionmaker[Session], agents: Agents, slots: int) -> None:
        self.sessions = sessions
        self.agents = agents
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.slots = asyncio.Semaphore(slots)

    @abstractmethod
    def unfinished(self, session: Session) -> Sequence[str]:
        """The ids of jobs a stopped process left unfinished."""

    @abstractmethod
    async def run(self, job_id: str) -> None:
        """Do one job."""

    async def db(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(session, *args)` in a thread, in one transaction."""

        def call() -> T:
            with self.sessions.begin() as session:
                return fn(session, *args)

        return await asyncio.to_thread(call)

    async def start(self, job_id: str) -> None:
        """`submit` from a coroutine: background tasks run plain functions in a thread."""
        self.submit(job_id)

    def submit(self, job_id: str) -> None:
        if job_id not in self.tasks:
            task = asyncio.create_task(self.run(job_id), name=f"{self.kind}-{job_id}")
            self.tasks[job_id] = task
            task.add_done_callback(lambda _: self.tasks.pop(job_id, None))

    async def resume_unfinished(self) -> None:
        """Pick up what a previous process left; retried until the database answers."""
        while True:
            try:
                ids = await self.db(self.unfinished)
                break
            except Exception as exc:  # database not there yet: try again shortly
                log.warning(f"cannot list unfinished {self.kind}s", extra={"reason": repr(exc)})
                await asyncio.sleep(2.0)
        for job_id in ids:
            log.info(f"resuming {self.kind}", extra={"id": job_id})
            self.submit(job_id)

    def cancel(self, job_id: str) -> None:
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Stop every task; their rows stay `running` and resume at the next start."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
