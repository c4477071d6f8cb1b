import os
import shutil
import subprocess
import time
import uuid

from fedutils.bridges import tff_workers as workers


def start_fake_worker(tmp_path, run_id):
    """A stand-in for TFF's helper: `sleep` renamed worker_binary, tagged with a run id."""
    folder = tmp_path / run_id
    folder.mkdir()
    fake = folder / workers.WORKER_NAME
    shutil.copy(shutil.which("sleep"), fake)
    env = {**os.environ, workers.RUN_ID_VARIABLE: run_id}
    proc = subprocess.Popen([str(fake), "300"], env=env)
    time.sleep(0.3)
    return proc


def test_stop_workers_stops_only_this_runs_helpers(tmp_path):
    run_a, run_b = f"a-{uuid.uuid4()}", f"b-{uuid.uuid4()}"
    mine = start_fake_worker(tmp_path, run_a)
    other = start_fake_worker(tmp_path, run_b)
    try:
        assert [p.pid for p in workers.find_workers(run_id=run_a)] == [mine.pid]
        assert not workers.find_workers(since=time.time() + 60)
        assert workers.stop_workers(run_id=run_a) == 1
        assert mine.wait(timeout=10) is not None
        assert other.poll() is None, "another run's helper must survive"
        assert not workers.find_workers(run_id=run_a)
    finally:
        mine.kill()
        other.kill()


def test_cli_reports_leftovers(tmp_path):
    run_id = f"c-{uuid.uuid4()}"
    proc = start_fake_worker(tmp_path, run_id)
    try:
        assert workers.main(["--run-id", run_id, "--report"]) == 1
        assert workers.main(["--run-id", run_id, "--report"]) == 0
    finally:
        proc.kill()
