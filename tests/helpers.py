"""What several test modules share: the quickstart config and a real TensorBoard server."""

import contextlib
import json
import pathlib
import subprocess
import sys
import urllib.request

from tfbn.workers import free_port

QUICKSTART = str(pathlib.Path(__file__).parent.parent / "configs" / "quickstart.yaml")


@contextlib.contextmanager
def tensorboard_server(logdir):
    """A real TensorBoard serving ``logdir`` on a free loopback port; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get_json(url):
    """The JSON a TensorBoard URL answers."""
    # No proxy: the server is on the loopback interface.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return json.load(response)
