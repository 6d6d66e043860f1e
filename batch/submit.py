"""How a batch job is launched: ``spark-submit --master local[2]`` on the local stack, or an EMR
Serverless ``StartJobRun`` request in production (same entry point, same arguments).

Locally the jars come from ``.stack/lib/spark`` (``local-stack/jvm/spark/pom.xml``), the Python
is the repo's venv (its ``bin`` first on ``PATH``: ``spark-submit`` and its workers find
``python3`` there), the stack's endpoints from ``.stack/env``. On EMR the venv is packed with
venv-pack and shipped as ``spark.archives`` (unpacked as ``./environment``), the code as a zip
in ``--py-files`` (:func:`package_code`), the jars by S3 URI (docs/batch.md).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Mapping, Sequence

REPO: Final = Path(__file__).resolve().parent.parent
ENTRY_POINT: Final = REPO / "batch" / "main.py"
#: The EMR Serverless release the jobs target: the newest confirmed to ship Spark 4 (4.0.2).
EMR_RELEASE: Final = "emr-spark-8.0.0"
#: The Kafka source for the EMR release's Spark 4.0 (local-stack/jvm/spark-emr/pom.xml resolves them
#: into .stack/lib/spark-emr; upload them to <artifacts>/jars/).
EMR_JARS: Final = ("spark-sql-kafka-0-10_2.13-4.0.0.jar", "spark-token-provider-kafka-0-10_2.13-4.0.0.jar",
                   "kafka-clients-3.9.0.jar", "commons-pool2-2.12.0.jar")
#: Environment variables never put into a request (visible in the EMR console): credentials come
#: from the job's IAM role (S3) or a secret store, not from submit parameters.
SECRET_MARKERS: Final = ("SECRET", "PASSWORD", "DSN", "TOKEN", "ACCESS_KEY")
#: Local Spark settings. Two task slots = the machine's two cores; Python workers are reused
#: so the per-process S3/Cassandra clients (batch.runtime) live across tasks.
LOCAL_CONF: Final[Mapping[str, str]] = {
    "spark.ui.showConsoleProgress": "false",
    "spark.python.worker.reuse": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "1g",
    "spark.log.level": "WARN",
}


def spark_jars(lib: Path) -> list[Path]:
    """The jars resolved into ``.stack/lib/spark`` (Spark's Kafka source and what it adds)."""
    jars = sorted((lib / "spark").glob("*.jar"))
    if not any(j.name.startswith("spark-sql-kafka") for j in jars):
        raise FileNotFoundError(f"no spark-sql-kafka jar in {lib / 'spark'}: run `make jars`")
    return jars


def local_command(job_args: Sequence[str], *, venv: Path, lib: Path, master: str = "local[2]",
                  conf: Mapping[str, str] = LOCAL_CONF) -> list[str]:
    """The ``spark-submit`` command line that runs ``batch/main.py JOB ...`` locally."""
    python = venv / "bin" / "python"
    cmd = [str(venv / "bin" / "spark-submit"), "--master", master, "--name", f"imgstream-{job_args[0]}",
           "--jars", ",".join(str(j) for j in spark_jars(lib)),
           "--conf", f"spark.pyspark.python={python}", "--conf", f"spark.pyspark.driver.python={python}"]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + [str(ENTRY_POINT), *job_args]


def local_env(stack_env: Mapping[str, str], venv: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a local run: the caller's, the stack's endpoints, the venv on PATH and
    the repo importable (driver and Python workers)."""
    env = dict(os.environ if base is None else base)
    env.update(stack_env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYSPARK_PYTHON", str(venv / "bin" / "python"))
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # driver, block manager and UI on loopback only
    return env


def run_local(job_args: Sequence[str], *, stack_env: Mapping[str, str], venv: Path, lib: Path,
              master: str = "local[2]") -> int:
    """Run a job with ``spark-submit`` (output passes through; the last stdout line is the
    summary). Returns its exit status."""
    cmd = local_command(job_args, venv=venv, lib=lib, master=master)
    return subprocess.call(cmd, env=local_env(stack_env, venv), cwd=str(REPO))


# --- EMR Serverless --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmrTarget:
    """Where a job runs on EMR Serverless and where its artefacts are (all S3 URIs)."""

    application_id: str
    role_arn: str
    #: Prefix holding ``main.py``, ``imgstream-code.zip``, ``imgstream-venv.tar.gz`` and ``jars/``.
    artifacts_uri: str
    log_uri: str
    jars: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_minutes: int = 360


def _public_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(env.items())
            if k.startswith("IMGSTREAM_") and not any(m in k for m in SECRET_MARKERS)}


def emr_request(job_args: Sequence[str], target: EmrTarget) -> dict[str, Any]:
    """The ``StartJobRun`` request (botocore's ``emr-serverless`` shape) for ``JOB [options]``."""
    base = target.artifacts_uri.rstrip("/")
    python = "./environment/bin/python"
    conf = {
        "spark.archives": f"{base}/imgstream-venv.tar.gz#environment",
        "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": python,
        "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": python,
        "spark.executorEnv.PYSPARK_PYTHON": python,
        "spark.python.worker.reuse": "true",
        # S3 credentials come from the job role: empty keys select botocore's default chain.
        "spark.emr-serverless.driverEnv.IMGSTREAM_S3_ACCESS_KEY": "",
        "spark.emr-serverless.driverEnv.IMGSTREAM_S3_SECRET_KEY": "",
    }
    for key, value in _public_env(target.env).items():
        conf[f"spark.emr-serverless.driverEnv.{key}"] = value
    params = ["--py-files", f"{base}/imgstream-code.zip"]
    jars = target.jars or tuple(f"{base}/jars/{name}" for name in EMR_JARS)
    params += ["--jars", ",".join(jars)]
    for key, value in conf.items():
        params += ["--conf", f"{key}={value}"]
    return {
        "applicationId": target.application_id,
        "executionRoleArn": target.role_arn,
        "clientToken": str(uuid.uuid4()),
        "name": f"imgstream-{job_args[0]}",
        "jobDriver": {"sparkSubmit": {
            "entryPoint": f"{base}/main.py",
            "entryPointArguments": list(job_args),
            "sparkSubmitParameters": shlex.join(params),
        }},
        "configurationOverrides": {"monitoringConfiguration": {
            "s3MonitoringConfiguration": {"logUri": target.log_uri}}},
        "executionTimeoutMinutes": target.timeout_minutes,
        "tags": {"app": "imgstream", "job": job_args[0]},
    }


def application_request(name: str = "imgstream-batch") -> dict[str, Any]:
    """A ``CreateApplication`` request for the Spark application the jobs run on."""
    return {"name": name, "releaseLabel": EMR_RELEASE, "type": "SPARK", "architecture": "X86_64",
            "clientToken": str(uuid.uuid4()),
            "autoStopConfiguration": {"enabled": True, "idleTimeoutMinutes": 15},
            "maximumCapacity": {"cpu": "64 vCPU", "memory": "256 GB"}}


def validate(operation: str, request: Mapping[str, Any]) -> None:
    """Validate ``request`` against botocore's own ``emr-serverless`` model (raises ValueError)."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("emr-serverless")
    report = ParamValidator().validate(dict(request), model.operation_model(operation).input_shape)
    if report.has_errors():
        raise ValueError(report.generate_report())


def send(request: Mapping[str, Any], region: str | None = None) -> dict[str, Any]:
    """Send a ``StartJobRun`` request (credentials from the usual AWS chain)."""
    import botocore.session

    client = botocore.session.get_session().create_client("emr-serverless", region_name=region)
    answer: dict[str, Any] = client.start_job_run(**request)
    return answer


def package_code(out: Path) -> Path:
    """Zip ``imgstream/`` and ``batch/`` (sources only) for ``--py-files``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in ("imgstream", "batch"):
            for path in sorted((REPO / package).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".json"):
                    zf.write(path, path.relative_to(REPO).as_posix())
    return out


if __name__ == "__main__":  # pragma: no cover - convenience: python -m batch.submit JOB ...
    from imgstream.config import load_env_file

    sys.exit(run_local(sys.argv[1:], stack_env=load_env_file(REPO / ".stack" / "env"),
                       venv=REPO / ".venv", lib=REPO / ".stack" / "lib"))
