import shutil
import subprocess
import time

from fedutils import workers


def test_stop_workers_stops_only_recent_helpers(tmp_path):
    fake = tmp_path / workers.WORKER_NAME
    shutil.copy(shutil.which("sleep"), fake)
    since = time.time() - 1
    proc = subprocess.Popen([str(fake), "300"])
    try:
        time.sleep(0.3)
        assert any(p.pid == proc.pid for p in workers.find_workers(since=since))
        assert not any(p.pid == proc.pid for p in workers.find_workers(since=time.time() + 60))
        assert workers.stop_workers(since=since) >= 1
        assert proc.wait(timeout=10) is not None
        assert not workers.find_workers(since=since)
    finally:
        proc.kill()


def test_cli_reports_leftovers(tmp_path):
    fake = tmp_path / workers.WORKER_NAME
    shutil.copy(shutil.which("sleep"), fake)
    since = time.time() - 1
    proc = subprocess.Popen([str(fake), "300"])
    try:
        time.sleep(0.3)
        assert workers.main(["--since", str(since), "--report"]) == 1
        assert workers.main(["--since", str(since), "--report"]) == 0
    finally:
        proc.kill()
