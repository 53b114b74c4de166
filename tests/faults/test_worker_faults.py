"""Workers that die, are paused, crash on a job or are shut down, in the middle of a job.

Every test runs real Celery workers (prefork, one pool process) against a real
Redis and the real API, and checks the job record, its event stream and its
history: the job resumes from its last checkpoint, is never run by two
workers at once, and ends with the right status.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from core.config import Settings
from core.process import pid_alive
from stack.supervisor import ChildSpec, Supervisor

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.name != "posix", reason="process groups and POSIX signals")]

ITERATIONS = 120
LOG_EVERY = 10


def _assert_full_history(cluster: Any, job_id: str) -> None:
    # Every point exactly once and in order: a resumed run rewinds to its checkpoint
    # and logs the later points again, and a worker without the lease writes none.
    assert cluster.history(job_id) == list(range(LOG_EVERY, ITERATIONS + 1, LOG_EVERY))


@pytest.mark.timeout(120)
def test_kill9_of_the_whole_worker_resumes_the_job_from_its_checkpoint_under_dip_serve(cluster: Any) -> None:
    """`dip serve`'s supervisor restarts a worker killed with SIGKILL (main process and pool
    together); the job's lease lapses, the reaper of the new worker re-queues it, and it goes
    on from its last checkpoint with no one touching anything."""
    cluster.start_api()
    settings = Settings(redis_url=cluster.redis_server.url, var_dir=cluster.root / "var",
                        results_dir=cluster.results_dir)
    worker = ChildSpec("worker", tuple(cluster.worker_argv("served")))
    sup = Supervisor(settings, children=[worker], env=cluster.env(), restart_backoff_s=0.5)
    sup.start()
    try:
        job_id = cluster.submit(iterations=ITERATIONS, log_every=LOG_EVERY)
        before = cluster.wait_running(job_id, min_iteration=4 * cluster.checkpoint_every)
        old_pid = sup.pids()["worker"]
        old_group = [old_pid, *cluster.child_pids(old_pid)]
        killed_at = time.monotonic()
        os.killpg(old_pid, signal.SIGKILL)  # the main process and its pool process together
        seen_iteration = int(cluster.record(job_id)["iteration"])
        assert cluster.record(job_id)["status"] == "running"  # nobody knows yet

        # The supervisor restarts the worker; nothing else is done by the test but polling.
        def restarted() -> bool:
            sup.poll_once()
            pid = sup.pids()["worker"]
            return pid is not None and pid != old_pid
        cluster.until(restarted, timeout_s=10, what="worker restarted")
        restart_s = time.monotonic() - killed_at
        assert not any(pid_alive(pid) for pid in old_group)  # so no two workers can run it

        def resumed() -> list[int] | None:
            sup.poll_once()
            firsts = cluster.first_progress_of_each_run(job_id)
            return firsts if len(firsts) == 2 else None
        firsts = cluster.until(resumed, timeout_s=180, what="job resumed by the new worker",
                               on_timeout=cluster.logs_tail)
        resume_s = time.monotonic() - killed_at
        after = cluster.record(job_id)

        def finished() -> dict[str, str] | None:
            sup.poll_once()
            record = cluster.record(job_id)
            return record if record.get("status") in ("succeeded", "failed", "canceled") else None
        done = cluster.until(finished, timeout_s=120, what="job finished")
    finally:
        sup.stop()

    start = firsts[1]  # the resumed run's first progress is its checkpoint's iteration
    print(f"\nkill -9 at iteration ~{seen_iteration}: worker back in {restart_s:.1f} s, job resumed "
          f"in {resume_s:.1f} s from checkpoint {start}")
    assert done["status"] == "succeeded", done
    assert restart_s < 5
    # Progress at a multiple of checkpoint_every is published just before that checkpoint is saved.
    assert start > 0 and start >= (seen_iteration - 1) // cluster.checkpoint_every * cluster.checkpoint_every
    assert int(done["start_iteration"]) == start
    assert before["worker"] != after["worker"]
    assert cluster.statuses(job_id) == [
        ("queued", None), ("running", 1), ("queued", "lease_expired"), ("running", 2), ("succeeded", None)]
    _assert_full_history(cluster, job_id)
    assert int(done["iteration"]) == ITERATIONS


@pytest.mark.timeout(120)
def test_sigterm_hands_the_job_back_and_another_worker_resumes_it(cluster: Any) -> None:
    """A graceful shutdown stops the job at the next poll with a checkpoint, re-queues it
    without counting an attempt, and exits; another worker goes on from that iteration."""
    cluster.start_api()
    # The first worker is slowed down so that the job is still in its middle, on any machine,
    # once the second worker is up; the second one runs at full speed.
    first = cluster.start_worker("first", DIP_FAULT_INJECTION="slow_steps")
    job_id = cluster.submit(iterations=ITERATIONS, log_every=LOG_EVERY)
    cluster.wait_running(job_id, min_iteration=1)
    second = cluster.start_worker("second")  # idle: the only job is taken
    before = cluster.wait_running(job_id, min_iteration=3 * cluster.checkpoint_every)
    assert before["worker"].startswith("first@")

    asked = time.monotonic()
    first.popen.send_signal(signal.SIGTERM)
    seen_iteration = int(before["iteration"])
    cluster.until(lambda: ("queued", "worker_shutdown") in cluster.statuses(job_id), timeout_s=10,
                  what="job handed back", on_timeout=cluster.logs_tail)
    handed_s = time.monotonic() - asked
    firsts = cluster.until(lambda: (f := cluster.first_progress_of_each_run(job_id)) and len(f) == 2 and f,
                           timeout_s=60, what="job resumed on the second worker", on_timeout=cluster.logs_tail)
    resume_s = time.monotonic() - asked
    code = first.popen.wait(30)
    stop_s = time.monotonic() - asked
    done = cluster.wait_finished(job_id)

    print(f"\nSIGTERM at iteration >= {seen_iteration}: job handed back in {handed_s:.2f} s, resumed "
          f"in {resume_s:.2f} s at iteration {firsts[1]}; the worker exited in {stop_s:.1f} s")
    assert code == 0, first.tail()
    assert handed_s < 3 and stop_s < 10
    assert "handed back to the queue" in first.text()
    assert done["status"] == "succeeded", done
    assert done["worker"].startswith("second@") and second.alive()
    assert firsts[1] >= seen_iteration  # the checkpoint was written where it stopped
    assert done["attempts"] == "1"  # a hand-back is not a crash
    assert cluster.statuses(job_id) == [("queued", None), ("running", 1), ("queued", "worker_shutdown"),
                                        ("running", 1), ("succeeded", None)]
    _assert_full_history(cluster, job_id)


@pytest.mark.timeout(120)
def test_a_paused_worker_loses_its_lease_and_writes_nothing_after(cluster: Any) -> None:
    """A worker frozen (SIGSTOP) for longer than the lease is presumed dead: another worker
    takes the job over from its checkpoint. Once thawed, the first one finds its lease
    gone and stops at once, so the two never both write to the job."""
    cluster.start_api()
    # The first worker is slowed down so that the job is still in its middle, on any machine,
    # once the second worker is up; the second one runs at full speed.
    first = cluster.start_worker("first", DIP_FAULT_INJECTION="slow_steps")
    job_id = cluster.submit(iterations=ITERATIONS, log_every=LOG_EVERY)
    cluster.wait_running(job_id, min_iteration=1)
    second = cluster.start_worker("second")
    before = cluster.wait_running(job_id, min_iteration=3 * cluster.checkpoint_every)
    assert before["worker"].startswith("first@")

    first.group_signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        firsts = cluster.until(lambda: (f := cluster.first_progress_of_each_run(job_id)) and len(f) == 2 and f,
                               timeout_s=60, what="job taken over by the second worker",
                               on_timeout=cluster.logs_tail)
        takeover_s = time.monotonic() - paused
        taken = cluster.wait_running(job_id, min_iteration=firsts[1] + 2 * cluster.checkpoint_every)
        assert taken["worker"].startswith("second@")
    finally:
        first.group_signal(signal.SIGCONT)
    cluster.until(lambda: "lease lost" in first.text(), timeout_s=20, what="the thawed worker gives up",
                  on_timeout=first.tail)
    done = cluster.wait_finished(job_id)

    print(f"\npaused worker: job taken over after {takeover_s:.1f} s (lease {cluster.lease_s} s) "
          f"from checkpoint {firsts[1]}")
    assert done["status"] == "succeeded", done
    assert done["worker"].startswith("second@")
    assert takeover_s < cluster.lease_s + 10
    assert firsts[1] > 0
    assert first.alive()  # only its job was dropped; the worker goes on
    assert cluster.statuses(job_id) == [("queued", None), ("running", 1), ("queued", "lease_expired"),
                                        ("running", 2), ("succeeded", None)]
    _assert_full_history(cluster, job_id)


@pytest.mark.timeout(120)
def test_a_job_that_crashes_its_worker_every_time_fails_at_the_cap_and_the_queue_flows(cluster: Any) -> None:
    """The pool process dies at every start of one job (test-only fault injection): the job
    fails ``worker_lost`` after the attempt cap, and the job queued behind it runs."""
    cluster.start_api()
    poison = cluster.submit(iterations=40, log_every=LOG_EVERY, seed=1)
    follower = cluster.submit(iterations=40, log_every=LOG_EVERY, seed=2)
    started = time.monotonic()
    worker = cluster.start_worker("crashy", DIP_FAULT_INJECTION=f"crash_on_start:{poison}")

    failed = cluster.wait_finished(poison, timeout_s=60)
    fail_s = time.monotonic() - started
    followed = cluster.wait_finished(follower, timeout_s=60)

    print(f"\ncrash-every-time job failed {fail_s:.1f} s after the worker started")
    assert failed["status"] == "failed", failed
    assert failed["error_code"] == "worker_lost"
    assert "started 3 times" in failed["error_message"] and "attempt cap 3" in failed["error_message"]
    assert [a for s, a in cluster.statuses(poison) if s == "running"] == [1, 2, 3]
    assert followed["status"] == "succeeded", followed
    assert worker.alive() and worker.text().count("WorkerLostError") >= 3
