"""imgvec.spark: the command's session started early and quietly, the JVM's class-data-sharing archive, tasks
of several CPUs, and the one task runner (RowTask, run_tasks) on a real session.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import pytest

from helpers import EXAMPLES, SPARK, assert_usage_error, classic_session, imgvec, imgvec_here
from imgvec import ImageVectorizer

# A fresh interpreter that starts a session as the commands do and says what its JVM was started with.
SESSION_PROBE = """
import json
from imgvec.spark import session as jobs
spark = jobs.get_session("local[1]", quiet=True)
system = spark.sparkContext._jvm.java.lang.System
arguments = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
print(json.dumps({"arguments": list(arguments), "java": system.getProperty("java.home"),
                  "classpath": system.getProperty("java.class.path"),
                  "rows": spark.range(3, numPartitions=2).rdd.map(lambda x: x).count()}))
"""


def _probe(env) -> dict:
    result = subprocess.run([sys.executable, "-c", SESSION_PROBE], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.spark
def test_the_commands_jvm_ends_with_it_cleans_up_and_leaves_a_class_archive_for_the_next(tmp_path):
    """`imgvec embed` prints none of the JVM's start-up lines and does not wait for Spark to stop: its JVM exits
    when the command's process does, and Spark's own shutdown hook still removes its temporary folders. The JVM
    listed its classes; once it ends, a detached process makes the archive (once), and the next JVM maps it:
    `java -Xshare:on` (which fails rather than run without it) accepts it with that classpath."""
    cache, local = tmp_path / "cache", tmp_path / "spark-local"
    local.mkdir()
    env = {**os.environ, "IMGVEC_CACHE": str(cache), "SPARK_LOCAL_DIRS": str(local)}
    result = imgvec("embed", EXAMPLES / "coffee.jpg", "-o", tmp_path / "out", "--weights", "random",
                    "--model", "resnet18", "--engine", "torch", *SPARK, env=env)  # torch: no export in the new cache
    assert result.returncode == 0, result.stderr
    assert "succeeded 1, failed 0" in result.stdout
    # The JVM's start-up lines, held back while it started, are dropped: they say nothing to the command's user.
    assert "Using incubator modules" not in result.stderr and "setLogLevel" not in result.stderr, result.stderr
    deadline = time.monotonic() + 60
    while os.listdir(local) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert os.listdir(local) == []

    deadline = time.monotonic() + 300
    while not glob.glob(str(cache / "jvm" / "*.jsa")) and time.monotonic() < deadline:
        failed = glob.glob(str(cache / "jvm" / "*.failed"))
        assert not failed, open(failed[0]).read()
        time.sleep(1)
    [archive] = glob.glob(str(cache / "jvm" / "*.jsa"))
    time.sleep(1)  # the builder removes its marker and list just after the rename
    assert sorted(os.listdir(cache / "jvm")) == [os.path.basename(archive)]  # no list, marker or partial file

    started = _probe(env)
    assert f"-XX:SharedArchiveFile={archive}" in started["arguments"]
    assert started["rows"] == 3
    check = subprocess.run([os.path.join(started["java"], "bin", "java"), "-Xshare:on",
                            f"-XX:SharedArchiveFile={archive}", "-cp", started["classpath"], "-version"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr + check.stdout
    assert sorted(os.listdir(cache / "jvm")) == [os.path.basename(archive)]  # used, not made again


def test_archive_off_and_a_failed_build_start_the_jvm_as_before(tmp_path, monkeypatch):
    from imgvec.spark import jvm

    monkeypatch.delenv("SPARK_HOME", raising=False)  # pyspark's own jars, even in the quick tier (no JVM starts)
    monkeypatch.setenv("IMGVEC_CACHE", str(tmp_path))
    monkeypatch.setattr(jvm, "_listing", {})
    base = jvm._base()
    assert base is not None and base.startswith(str(tmp_path))
    [listing] = jvm.java_options()
    assert listing == f"-XX:DumpLoadedClassList={base}.{os.getpid()}.classes"

    # A build that fails says why, once: no later JVM lists for an archive that cannot be made.
    with open(f"{base}.1.classes", "w") as f:
        f.write("java/lang/Object\n")
    open(base + ".building", "w").close()
    jvm.dump(base, f"{base}.1.classes", "/bin/false", "unused")
    assert "exited 1" in open(base + ".failed").read()
    assert not os.path.exists(base + ".building") and not os.path.exists(f"{base}.1.classes")
    monkeypatch.setattr(jvm, "_listing", {})
    assert jvm.java_options() == []

    open(base + ".jsa", "w").close()  # an archive made by another run meanwhile is used
    assert jvm.java_options() == [f"-XX:SharedArchiveFile={base}.jsa"]
    monkeypatch.setenv("IMGVEC_JVM_ARCHIVE", "0")
    assert jvm.java_options() == []


@pytest.mark.spark
def test_a_mistake_found_while_the_jvm_starts_prints_one_line_and_stops_it(tmp_path):
    """`embed` starts its JVM before torch is imported and the weights checked: a bad weights file is still one
    line, with none of the JVM's start-up lines, and nothing is written; in-process, a later session runs."""
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint")
    result = imgvec("embed", EXAMPLES, "-o", tmp_path / "out", "--weights", bad, *SPARK)
    assert_usage_error(result, "is not a PyTorch checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()

    script = (f"from imgvec.cli.main import main\nfrom imgvec.spark import session as jobs\n"
              f"rc = main(['embed', {str(EXAMPLES)!r}, '-o', {str(tmp_path / 'out')!r}, '--weights', {str(bad)!r}])\n"
              "spark = jobs.get_session('local[1]', quiet=True)\n"
              "print(rc, spark.sparkContext.parallelize(range(5), 2).map(lambda x: x * 2).sum())\n")
    after = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert after.stdout.split()[-2:] == ["2", "20"], after.stderr
    # The same against a master that is not there: its context, still waiting to register, is ended at once rather
    # than holding the next session back for the minutes Spark gives a master to answer.
    unanswered = script.replace("'--weights',", "'--master', 'spark://127.0.0.1:9', '--weights',")
    after = subprocess.run([sys.executable, "-c", unanswered], capture_output=True, text=True, timeout=90)
    assert after.stdout.split()[-2:] == ["2", "20"], after.stderr
    # And one dropped before its JVM started, while another session was starting (a command that failed at once).
    # Whichever then starts first, the next session runs: the dropped one ends the JVM it started rather than wait
    # for the master, and leaves alone a JVM that is not its own.
    queued = ("from imgvec.base.settings import RunOptions\nfrom imgvec.spark import session as jobs\n"
              "jobs._starting.acquire()\njobs.start_early(RunOptions(master='spark://127.0.0.1:9'))\n"
              "dropped = jobs._early\njobs.drop_early()\njobs._starting.release()\n{first}"
              "spark = jobs.get_session('local[1]', quiet=True)\n{then}"
              "print(2, spark.sparkContext.parallelize(range(5), 2).map(lambda x: x * 2).sum())\n")
    for first, then in (("dropped.thread.join()\n", ""), ("", "dropped.thread.join()\n")):
        after = subprocess.run([sys.executable, "-c", queued.format(first=first, then=then)], capture_output=True,
                               text=True, timeout=90)
        assert after.stdout.split()[-2:] == ["2", "20"], after.stderr


@pytest.fixture(scope="module")
def two_cpu_tasks():
    spark = classic_session("local[2]", **{"spark.task.cpus": "2", "spark.executorEnv.OMP_NUM_THREADS": "7"})
    yield spark
    spark.stop()


@pytest.mark.spark
def test_torch_threads_follow_the_tasks_cpus_not_the_environment(two_cpu_tasks, example_bytes):
    spark = two_cpu_tasks
    df = spark.createDataFrame([(n, b) for n, b in example_bytes.items()], "name string, content binary")
    assert ImageVectorizer("resnet18", weights="random").process_images(df).filter("error is null").count() == 10

    def threads(batches):
        import pandas as pd
        import torch

        for _ in batches:
            yield pd.DataFrame({"threads": [torch.get_num_threads()], "omp": [os.environ.get("OMP_NUM_THREADS")]})

    rows = spark.range(0, 1, numPartitions=1).mapInPandas(threads, "threads int, omp string").collect()
    assert (rows[0].threads, rows[0].omp) == (2, "7")  # the worker's environment said 7; the task has 2


def _tiny_environment(tmp_path):
    """A real virtual environment (no pip) with one installed package, an editable install whose source lies
    outside it, a PySpark, a Triton and byte code: what --ship-env must ship, and what it must leave out."""
    prefix = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    [site] = glob.glob(str(prefix / "lib" / "python*" / "site-packages"))
    for package, text in (("installed_pkg", "WHO = 'installed'"), ("pyspark", ""), ("triton", "")):
        os.makedirs(os.path.join(site, package, "__pycache__"))
        open(os.path.join(site, package, "__init__.py"), "w").write(text)
        open(os.path.join(site, package, "__pycache__", "x.cpython-311.pyc"), "wb").write(b"\0")
    source = tmp_path / "project" / "src"
    os.makedirs(source / "editable_pkg")
    (source / "editable_pkg" / "__init__.py").write_text("WHO = 'editable'")
    (tmp_path / "project" / "data.bin").write_bytes(b"\0" * 1000)  # the project's other files stay behind
    open(os.path.join(site, "__editable__.editable_pkg-0.1.pth"), "w").write(f"{source}\n")
    return prefix, source


def test_ship_env_packs_a_virtual_environment_with_its_editable_installs_once(tmp_path, monkeypatch):
    import hashlib
    import zipfile

    from imgvec.spark import environment

    monkeypatch.setenv("IMGVEC_CACHE", str(tmp_path / "cache"))
    prefix, source = _tiny_environment(tmp_path)
    said = []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tag = hashlib.sha256(str(prefix).encode()).hexdigest()[:12]
    stale = tmp_path / "cache" / "environments" / f"{tag}-0.zip.{int(dead.stdout)}.partial"  # its command ended
    os.makedirs(stale.parent)
    stale.write_bytes(b"\0" * 100)
    archive = environment.archive(said.append, prefix=str(prefix))
    assert len(said) == 2 and said[0].startswith("packing this Python environment for the workers, once")
    assert not stale.exists()  # what a command that ended while it packed left is removed
    with zipfile.ZipFile(archive) as packed:
        names = packed.namelist()
        packed.extractall(tmp_path / "unpacked")
    assert "site-packages/installed_pkg/__init__.py" in names
    assert not [n for n in names if n.startswith(("site-packages/pyspark", "site-packages/triton"))
                or "__pycache__" in n or n.endswith((".pth", "data.bin"))]
    # The Python the environment was made from, the archive's site-packages first on its path (as the executors
    # run it), imports both packages from the archive alone.
    os.rename(tmp_path / "project", tmp_path / "project-gone")
    run = subprocess.run([sys._base_executable, "-c", "import installed_pkg, editable_pkg; "
                          "print(installed_pkg.WHO, editable_pkg.WHO, editable_pkg.__file__)"],
                         capture_output=True, text=True, check=True, cwd=tmp_path / "unpacked",
                         env={**os.environ, "PYTHONPATH": "site-packages"})
    assert run.stdout.split()[:2] == ["installed", "editable"]
    assert run.stdout.split()[2].startswith(str(tmp_path / "unpacked"))
    os.rename(tmp_path / "project-gone", tmp_path / "project")
    # Made once: the same environment gives the same archive, unwritten; an edited source gives a new one, and
    # the earlier archive of this environment is gone.
    made = os.stat(archive).st_mtime_ns
    assert environment.archive(said.append, prefix=str(prefix)) == archive and len(said) == 2
    assert os.stat(archive).st_mtime_ns == made
    (source / "editable_pkg" / "__init__.py").write_text("WHO = 'edited'")
    again = environment.archive(said.append, prefix=str(prefix))
    assert again != archive and os.path.exists(again) and not os.path.exists(archive)


def test_ship_env_says_in_one_line_what_it_cannot_pack(tmp_path):
    from imgvec.spark import environment

    with pytest.raises(ValueError, match="runs in none: make one"):
        environment.archive(prefix=sys.base_prefix)
    os.makedirs(tmp_path / "conda" / "conda-meta")
    with pytest.raises(ValueError, match="is a conda environment: pack it with `conda pack"):
        environment.archive(prefix=str(tmp_path / "conda"))


def test_ship_env_on_spark_connect_is_one_line_and_leaves_nothing(tmp_path, capsys):
    result = imgvec_here(capsys, "embed", EXAMPLES / "coffee.jpg", "-o", tmp_path / "out", "--model", "resnet18",
                         "--weights", "random", "--master", "sc://127.0.0.1:15002", "--ship-env")
    assert_usage_error(result, "a Spark Connect server's executors run the server's Python: install imgvec there")
    assert not (tmp_path / "out").exists()


def test_the_executors_python_is_compared_with_the_drivers_in_one_line():
    from imgvec.spark import workers

    driver = workers.here()  # this interpreter's own answer, as an executor running it gives
    assert driver["imgvec"] and driver["torch"] and len(driver["imgvec code"]) == 12
    assert workers.difference(driver, dict(driver)) is None
    older = workers.difference(driver, {**driver, "torch": "2.9.1"})
    assert older.startswith(f"the executors run torch 2.9.1, the driver torch {driver['torch']}: ")
    assert "--ship-env" in older
    edited = workers.difference(driver, {**driver, "imgvec code": "0" * 12})
    assert edited.startswith("the executors run imgvec's code 000000000000, the driver imgvec's code ")
    assert "no imgvec and no torch" in workers.difference(driver, {**driver, "imgvec": None, "torch": None})
