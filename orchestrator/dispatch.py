"""The dispatcher: the one owner of a run's in-flight table, and the only sender of its jobs.

Redis holds, per run, the in-flight table (``distillq.keys.INFLIGHT``: job key → last send
time, number of sends, re-sends of a job that waited in its queue) and the started table
(``STARTED_KEY``: the jobs a worker has begun, marked by the worker). The controller asks the
dispatcher to ``ensure`` each job its cycle still needs; the dispatcher sends it unless a send
of it is in flight and within its deadline, and says when a job has used up ``loop.max_sends``.
If Redis loses the tables, every job not yet committed is simply sent again, and the
idempotent workers make that harmless.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from distillq.jobs import JobId, key_cycle
from distillq.keys import INFLIGHT, RESENDS, STARTED_KEY, as_text
from distillq.queues import ROUTES
from distillq.spec import LoopSpec

log = logging.getLogger("distillq.controller")

Send = Callable[[str, list[Any], str], None]  # (task name, args, task id)

# KEYS: in-flight table, started table, re-send count; ARGV: started-field prefix, job keys.
# Removes the jobs' entries and adds the re-sends of those it removed (idempotent).
FORGET_LUA = """
local total = 0
for i = 2, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local ok, entry = pcall(cjson.decode, raw)
    if ok and type(entry) == 'table' and tonumber(entry['sends']) then
      total = total + math.max(0, tonumber(entry['sends']) - 1)
    end
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
  redis.call('HDEL', KEYS[2], ARGV[1] .. ARGV[i])
end
if total > 0 then
  redis.call('INCRBY', KEYS[3], total)
end
return total
"""
SEND_BATCH = 500  # sends recorded in the in-flight table, then made, this many at a time


def _time(raw: Any) -> float:
    """A mark's time; an unreadable one (or an older worker's ``1``) is long past."""
    try:
        return float(as_text(raw))
    except ValueError:
        return 0.0


class Dispatcher:
    """Sends one run's jobs through ``send`` (a Celery sender, or a recorder in tests and
    benches), recording each send in the in-flight table before it is made."""

    def __init__(self, client: redis.Redis, run_id: str, send: Send,
                 clock: Callable[[], float] = time.time):
        self.redis, self.run_id, self.send, self.clock = client, run_id, send, clock
        self.inflight: dict[str, dict[str, float]] = {}
        self._loop: LoopSpec | None = None
        self._updates: dict[str, str] = {}  # in-flight entries to write
        self._outbox: list[tuple[str, list[Any], str]] = []  # sends to make
        # job key -> the last mark a worker left on it (read when needed)
        self._started: dict[str, float] | None = None
        self._busy: dict[str, bool] = {}  # queue → holds messages (this tick)
        self._cycle = 0  # the cycle being driven: entries of earlier ones are dropped
        self._forget: Any = None  # FORGET_LUA, registered when first needed

    @property
    def _key(self) -> str:
        return INFLIGHT.format(run_id=self.run_id)

    def load(self, loop: LoopSpec) -> None:
        """The start of a tick: one HGETALL of the whole run's in-flight table."""
        raw = self.redis.hgetall(self._key)
        self.inflight = {as_text(k): json.loads(v) for k, v in raw.items()}
        self._loop, self._updates, self._outbox = loop, {}, []
        self._started, self._busy = None, {}

    def forget_before(self, cycle: int) -> None:
        """Drop the in-flight and started entries of cycles before ``cycle``: they are decided
        and their jobs are never sent again, so the tables read each tick do not grow with
        the run. Their re-sends are added to ``RESENDS`` by the same script, which counts only
        the entries it removes: run twice (a retried EXEC, two controllers), it adds nothing
        the second time (the ``distillq_job_resends`` metric counts the whole run)."""
        self._cycle = cycle
        old = [key for key in self.inflight
               if (c := key_cycle(key)) is not None and c < cycle]
        if not old:
            return
        if self._forget is None:
            self._forget = self.redis.register_script(FORGET_LUA)
        keys = [self._key, STARTED_KEY.format(run_id=self.run_id),
                RESENDS.format(run_id=self.run_id)]
        for start in range(0, len(old), SEND_BATCH):
            self._forget(keys=keys, args=[f"{self.run_id}:", *old[start : start + SEND_BATCH]])
        for key in old:
            del self.inflight[key]
        log.debug("run=%s dropped %d in-flight entries of cycles before %d",
                  self.run_id, len(old), cycle)

    def ensure(self, job: JobId, storage: str, deadline_s: float) -> int:
        """Send the job unless a send of it is in flight and not yet past its deadline.
        Returns 0, or the number of sends made when the job has used up ``loop.max_sends``
        (nothing is sent: the caller records the job as failed).

        The deadline runs from the send, and is extended while a worker marks the job
        (``workers.context.mark_started``: at its start, then as a heartbeat): a job whose last
        mark is within the deadline is being worked on, or waits in its worker for a request
        slot or the rate limiter, and is not re-sent. A job no worker has started while its
        queue holds messages is most likely waiting there (a big cycle, a slow teacher): it is
        re-sent only after ``loop.queue_deadline_s``, and such re-sends do not count towards
        ``max_sends``. Not started with its queue empty, it was lost (say, reserved by a worker
        killed before it began): the job's own deadline applies."""
        assert self._loop is not None, "load() first"
        key = job.key
        entry = self.inflight.get(key, {"sent_at": 0.0, "sends": 0})
        now = self.clock()
        late = bool(entry["sends"]) and now - entry["sent_at"] >= deadline_s
        marked = self._last_mark(key) if late else None
        if marked is not None and now - marked < deadline_s:
            return 0  # a worker has it and marked it within the deadline: working, or
            # waiting for a request slot or the rate limiter, not lost
        queued = late and marked is None and self._queue_busy(job.task)
        if entry["sends"]:
            limit = max(deadline_s, self._loop.queue_deadline_s) if queued else deadline_s
            if now - entry["sent_at"] < limit:
                return 0
        requeued = int(entry.get("requeued", 0))
        if not queued and entry["sends"] - requeued >= self._loop.max_sends:
            return int(entry["sends"])
        entry = {"sent_at": now, "sends": entry["sends"] + 1, "requeued": requeued + queued}
        self.inflight[key] = entry
        self._updates[key] = json.dumps(entry)
        self._outbox.append((job.task, job.args(self.run_id, storage),
                             job.task_id(self.run_id, int(entry["sends"]))))
        if len(self._outbox) >= SEND_BATCH:
            self.flush()
        if entry["sends"] > 1:
            log.warning("run=%s re-sent %s (send %d)", self.run_id, key, entry["sends"])
        return 0

    def flush(self, send: bool = True) -> None:
        """Record the sends asked for so far in the in-flight table, then make them (not with
        ``send=False``: the run ended in this tick and its jobs are not wanted any more). A
        controller killed while it dispatches a big cycle has recorded every send it made (a
        recorded send it did not make waits for its deadline; an unrecorded one would go out
        twice)."""
        if self._updates:
            updates: dict[Any, Any] = self._updates
            self.redis.hset(self._key, mapping=updates)
            self._updates = {}
        outbox, self._outbox = self._outbox, []
        if send:
            for task, args, task_id in outbox:
                self.send(task, args, task_id)

    def _last_mark(self, key: str) -> float | None:
        """When a worker last marked job ``key`` (``workers.context.mark_started``), None if
        no worker has begun it (one HGETALL per tick, and only in a tick where some job is
        past its deadline)."""
        if self._started is None:
            prefix = f"{self.run_id}:"
            table = STARTED_KEY.format(run_id=self.run_id)
            self._started = {as_text(k)[len(prefix):]: _time(v)
                             for k, v in self.redis.hgetall(table).items()}
            # a late duplicate of a decided cycle's job, marked after its entries were dropped
            stray = [k for k in self._started
                     if (c := key_cycle(k)) is not None and c < self._cycle]
            if stray:
                self.redis.hdel(table, *(prefix + k for k in stray))
                for k in stray:
                    del self._started[k]
        return self._started.get(key)

    def _queue_busy(self, task: str) -> bool:
        """Whether the broker queue of ``task`` holds messages (one LLEN per queue and tick;
        the Redis transport keeps a queue as a list of its name)."""
        queue = ROUTES[task]["queue"]
        if queue not in self._busy:
            self._busy[queue] = bool(self.redis.llen(queue))
        return self._busy[queue]
