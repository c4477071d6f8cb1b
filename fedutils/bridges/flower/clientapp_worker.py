"""One long-lived ClientApp process per SuperNode, for Flower's `process` isolation mode.

Flower 1.39's `flwr-clientapp` runs one task and exits, so a SuperNode in its default
`subprocess` mode starts a new Python process, importing Flower anew, for every message it
receives: two per node per round here (train, evaluate). A SuperNode started with
`--isolation process` starts none; it waits for an outside process to take its tasks from
its Runtime API. This is that process: it takes each ClientApp task as it arrives, runs the
app in this same process (loaded once per app), and sends the reply back, with the calls
`flwr-clientapp` itself makes (Flower 1.39's runtime API; the course pins that version).

    python -m fedutils.bridges.flower.clientapp_worker --runtime-api-address 127.0.0.1:9094
"""
from __future__ import annotations

import argparse
import socket
import time
from typing import Callable

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (RuntimeTokenHttpInterceptor,
                                         RuntimeVersionHttpInterceptor)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import (pull_task_input, push_message,
                                                  push_task_output)

POLL_SECONDS = 0.2   # how often an idle worker asks its SuperNode for a task


def serve(address: str) -> None:
    """Take and run the SuperNode's ClientApp tasks, one at a time, until stopped."""
    _wait_until_open(address)
    tasks = _client(address, RuntimeVersionHttpInterceptor(component_name="SuperExec"))
    apps: dict[str, Callable] = {}   # FAB hash -> loaded ClientApp
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    while True:
        found = tasks.AcquireTask(request)
        if not (found.HasField("task") and found.token):
            time.sleep(POLL_SECONDS)
            continue
        try:
            run_task(address, found.token, apps)
        except Exception as err:  # noqa: BLE001 - one failed task must not end the node
            print(f"task {found.task.task_id} failed: {type(err).__name__}: {err}", flush=True)


def run_task(address: str, token: str, apps: dict) -> None:
    """What one `flwr-clientapp` process does, minus starting and exiting: fetch the message
    and context, run the ClientApp on them (loading it once per app), push the reply and the
    task's final status. An error in the app goes back to the server as an error reply."""
    client = _client(address, RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                     RuntimeTokenHttpInterceptor(token))
    context, status, details = None, SubStatus.FAILED, "the ClientApp did not run"
    try:
        message, context, run, fab = pull_task_input(client)
        try:
            if fab.hash_str not in apps:
                install_from_fab(fab.content, skip_prompt=True)
                load = get_load_client_app_fn(default_app_ref="", app_path=None,
                                              multi_app=True)
                apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
            reply = apps[fab.hash_str](message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as err:  # noqa: BLE001 - reported to the server, as Flower does
            details = f"{type(err).__name__}: {err}"
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                            reply_to=message)
        push_message(client, reply, context)
    finally:
        push_task_output(client=client, context=context, sub_status=status, details=details)
        client.close()


def _wait_until_open(address: str, seconds: float = 120.0) -> None:
    """Wait for the SuperNode (started at the same time) to open its Runtime API: checking
    every 0.1 s is quicker than the HTTP client's growing back-off between retries."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"no SuperNode Runtime API at {address} after {seconds:.0f} s")


def _client(address: str, *interceptors) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=list(interceptors), retry_invoker=make_simple_http_retry_invoker())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", required=True,
                        help="the SuperNode's Runtime API (its --host and --port)")
    serve(parser.parse_args(argv).runtime_api_address)


if __name__ == "__main__":
    main()
