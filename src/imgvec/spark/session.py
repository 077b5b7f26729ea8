"""The Spark session a command runs on: started early and quietly for the `imgvec` command, or the caller's own;
classic Spark or Spark Connect."""

from __future__ import annotations

import os
import shlex
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

from imgvec.base import defaults
from imgvec.base.settings import RunOptions
from imgvec.spark import environment, jvm

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SparkWarning(UserWarning):
    """Something this Spark cannot do, or need not: said once; the command runs on."""


def get_session(master: str = defaults.MASTER, app_name: str = "imgvec", conf: dict | None = None,
                quiet: bool = False, ship_env: bool = False) -> SparkSession:
    """A SparkSession for `master`: a Spark master URL, or sc://host:port for Spark Connect.

    Local workers must run this interpreter (torch, imgvec) rather than whatever `python` is.
    quiet: the JVM this starts logs errors only, and prints none of its start-up lines.
    ship_env: the executors run this Python environment's packages, packed and sent to them (spark.environment).
    """
    from pyspark.sql import SparkSession

    with _starting:
        if master.startswith("sc://"):
            if ship_env:
                raise ValueError("--ship-env ships to a cluster imgvec starts a session on (spark://, yarn, k8s://); "
                                 "a Spark Connect server's executors run the server's Python: install imgvec there")
            return SparkSession.builder.appName(app_name).remote(master).config(map=conf or {}).getOrCreate()
        options = _classic_options(master, app_name, conf, quiet, ship_env)
        if quiet:
            _launch_quietly(options, holding=False)
        return _classic_session(options)


def _classic_session(options: dict) -> SparkSession:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.config(map=options).getOrCreate()
    jvm.started(spark)
    environment.drop_driver_copies(spark)
    return spark


def _classic_options(master: str, app_name: str, conf: dict | None, quiet: bool, ship_env: bool = False) -> dict:
    """The options of a classic session: what spark-submit gets when it launches the driver's JVM.

    The executors' Python: with ship_env, the one this environment was made from, the shipped packages first on
    its path; else spark.pyspark.python where it is set, else PYSPARK_PYTHON, else this interpreter (PySpark reads
    only PYSPARK_PYTHON, once, as its context starts).
    """
    conf = dict(conf or {})
    if ship_env and master.startswith("local"):
        warnings.warn("--ship-env: local Spark's executors run this Python already; nothing is shipped",
                      SparkWarning, stacklevel=2)
    elif ship_env:
        archive = f"{environment.archive(_say)}#{environment.NAME}"
        conf["spark.archives"] = ",".join(filter(None, (conf.get("spark.archives"), archive)))
        conf["spark.pyspark.python"] = environment.executor_python()
        path = conf.get("spark.executorEnv.PYTHONPATH")
        conf["spark.executorEnv.PYTHONPATH"] = ":".join(filter(None, (environment.PATH, path)))
    if "spark.pyspark.python" in conf:
        os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    options = {"spark.master": master, "spark.app.name": app_name, "spark.python.worker.reuse": "true"}
    if master.startswith("local"):
        options.update({"spark.driver.memory": "2g", "spark.ui.showConsoleProgress": "false"})
    # The JVM only moves bytes here: its optimising JIT compiler (C2) would spend several CPU
    # seconds per run competing with the model for the cores; C1 alone is faster end to end.
    java_options = ["-XX:TieredStopAtLevel=1", *jvm.java_options()]
    if quiet:
        quiet_logs = os.path.join(os.path.dirname(__file__), "log4j2-quiet.properties")
        java_options.append(f"-Dlog4j2.configurationFile={quiet_logs}")
    options["spark.driver.extraJavaOptions"] = " ".join(map(shlex.quote, java_options))
    return {**options, **conf}


def _say(line: str) -> None:
    print(f"imgvec: {line}", file=sys.stderr, flush=True)


# --- the JVM's start-up lines -----------------------------------------------------------------------

# What every JVM start prints, which says nothing to a command's user (imgvec sets the log level). Held back here,
# the one place that starts a quiet session's JVM: whatever else the JVM says goes through.
_START_UP_NOISE = (b"WARNING: Using incubator modules", b"Setting default log level to",
                   b"To adjust logging level use sc.setLogLevel")
_starting = threading.Lock()  # one session starts (or an unused early one stops) at a time


def _launch_quietly(options: dict, holding: bool):
    """Start this process's JVM (unless it has one) with its stderr relayed less the start-up lines: the gateway and
    the relay, or (None, None). `holding`: the relay keeps the rest back until released (start_early)."""
    from subprocess import PIPE

    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None:
        return None, None
    gateway = launch_gateway(SparkConf(loadDefaults=False).setAll(options.items()), popen_kwargs={"stderr": PIPE})
    relay = _Relay(gateway.proc.stderr, holding)
    SparkContext._ensure_initialized(gateway=gateway)
    return gateway, relay


class _Relay:
    """A JVM's stderr to ours, less the start-up lines; while held, kept back (or dropped, once abandoned)."""

    def __init__(self, stream, holding: bool):
        self.held: list[bytes] | None = [] if holding else None
        self.dropping = False
        self.lock = threading.Lock()
        threading.Thread(target=self._run, args=(stream,), daemon=True, name="imgvec-jvm-stderr").start()

    def _run(self, stream) -> None:
        for line in iter(stream.readline, b""):
            if line.startswith(_START_UP_NOISE):
                continue
            with self.lock:
                if self.held is not None:
                    if not self.dropping:
                        self.held.append(line)
                    continue
            _to_stderr(line)

    def release(self) -> None:
        with self.lock:
            for line in self.held or ():
                _to_stderr(line)
            self.held = None

    def drop(self) -> None:
        with self.lock:
            self.dropping = True
            if self.held is not None:
                self.held = []


# --- a command's session, started early ----------------------------------------------------------

_early = None  # the command's session, starting in the background: see start_early


def start_early(run: RunOptions) -> None:
    """Start the session `session(run)` will use now, in the background.

    The JVM's start (3-5 s) then overlaps the driver's imports and checks. What the JVM prints is held
    back until the session is used: a command that fails before then prints only its own one line.
    Not for Spark Connect, nor where this process already has a JVM (a notebook's, a test's).
    """
    global _early
    from pyspark import SparkContext

    if (_early is not None or run.spark is not None or run.master.startswith("sc://") or os.environ.get("SPARK_REMOTE")
            or "PYSPARK_GATEWAY_PORT" in os.environ or SparkContext._gateway is not None):
        return
    _early = _EarlySession(run.master, run.conf, run.ship_env)


def drop_early() -> None:
    """The command ends without the session it started early: stop it (once it is up) and its JVM."""
    global _early
    early, _early = _early, None
    if early is not None:
        early.abandon()


def _take_early(run: RunOptions):
    """The session start_early began for `run`, with the JVM's held output let through; else None."""
    global _early
    early, _early = _early, None
    if early is None:
        return None
    if early.wanted != (run.master, run.conf, run.ship_env):
        early.abandon()
        return None
    return early.take()


class _EarlySession:
    def __init__(self, master: str, conf: dict, ship_env: bool):
        self.wanted = (master, conf, ship_env)
        self.spark = self.error = self.gateway = self.relay = None
        self.abandoned = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._start, daemon=True, name="imgvec-early-session")
        self.thread.start()

    def _start(self) -> None:
        with _starting:
            try:
                master, conf, ship_env = self.wanted
                options = _classic_options(master, "imgvec", conf, quiet=True, ship_env=ship_env)
                gateway, relay = _launch_quietly(options, holding=True)
                with self.lock:
                    self.gateway, self.relay = gateway, relay
                    if self.abandoned:  # dropped while it waited or its JVM started: no context to wait for
                        self._stop()
                        return
                self.spark = _classic_session(options)
            except BaseException as error:  # raised where the session is taken
                self.error = error
            with self.lock:
                if self.abandoned:
                    self._stop()

    def take(self):
        self.thread.join()
        if self.relay is not None:
            self.relay.release()
        if self.error is not None:
            raise self.error
        return self.spark

    def abandon(self) -> None:
        jvm.forget()  # its JVM ran no job: its class list would make a poor archive
        with self.lock:
            self.abandoned = True
            if not self.thread.is_alive():
                self._stop()
            elif self.gateway is not None:  # still starting: a context waits minutes for a master that is not there
                self.gateway.proc.kill()  # (nothing of it to clean up yet); the thread's call then fails at once

    def _stop(self) -> None:
        """End the session's JVM (it ran no job) and forget it, so that a later session in this process starts its
        own. Terminated rather than stopped through Spark: a stop asks the cluster manager, which may not answer for
        minutes (a master that is not there); the JVM's shutdown hook still removes its temporary folders."""
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        if self.relay is not None:
            self.relay.drop()
        if self.gateway is None:  # the process had a JVM already, another session's: left alone
            return
        self.gateway.proc.terminate()
        SparkContext._gateway = SparkContext._jvm = None
        SparkContext._active_spark_context = None  # a context or session of that JVM is no later session's
        SparkSession._instantiatedSession = SparkSession._activeSession = None


def _to_stderr(data: bytes) -> None:
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


def is_connect(spark: SparkSession) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


@contextmanager
def session(run: RunOptions):
    """The session a command runs on: `run.spark` when the caller has one, else local, a cluster or Spark Connect
    (sc://). It stops only a session it started: one already active in this process (a notebook's) runs on.
    The `imgvec` command's classic session ends with its process instead (jvm.ends_with_process)."""
    if run.spark is not None:
        yield run.spark
        return
    from pyspark.sql import SparkSession

    before = SparkSession.getActiveSession()
    spark = _take_early(run) or get_session(run.master, conf=run.conf, quiet=True, ship_env=run.ship_env)
    if not is_connect(spark):
        spark.sparkContext.setLogLevel("ERROR")
    try:
        if is_connect(spark) or not run.master.startswith("local"):  # executors that may run another Python
            from imgvec.spark import workers

            workers.check(spark, task_slots(spark), shipped=run.ship_env)
        yield spark
    finally:
        if spark is not before:
            if is_connect(spark) or not jvm.ends_with_process:  # a Connect server keeps what it is not told to end
                spark.stop()
            jvm.build()


def task_slots(spark) -> int | None:
    """How many tasks run at once: cores / spark.task.cpus (None on Spark Connect, which hides the cores)."""
    if is_connect(spark):
        return None
    context = spark.sparkContext
    return max(1, context.defaultParallelism // int(context.getConf().get("spark.task.cpus", "1")))


