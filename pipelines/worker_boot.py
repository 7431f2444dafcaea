"""A Python SDK worker boot for runners without Beam's container: installs the staged job.

Beam's containers start each SDK worker through a ``boot`` program that fetches the job's
staged files (the ``--setup_file`` sdist, ``--extra_package``s, ``--requirements_file``) from
the runner, installs them, then starts the SDK harness. Without containers (a Flink/Spark
cluster with ``--environment_type=PROCESS``, or Beam's worker pool with
``--container_executable``) this module does the same job in Python:

    python -m apache_beam.runners.worker.worker_pool_main --service_port 50000 \\
        --container_executable "$(pwd)/.venv/bin/mediabeam-worker-boot"

It takes the boot flags (``--id --provision_endpoint --artifact_endpoint --control_endpoint
--logging_endpoint``), asks the provision service for the pipeline options and the staged
artifacts, writes them to ``$MEDIABEAM_BOOT_DIR/<id>/staged`` (default: ``--semi_persist_dir``
or a temp dir), installs
the staged packages with ``pip install --no-deps --target .../site`` (the worker's Python
already has the dependencies; nothing is downloaded), and runs
``apache_beam.runners.worker.sdk_worker_main`` with ``site`` first on ``PYTHONPATH``, so the
worker runs the shipped copy of the job, not whatever the machine had.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import IO, List, Optional, Sequence

import grpc
from apache_beam.portability.api import (
    beam_artifact_api_pb2,
    beam_artifact_api_pb2_grpc,
    beam_provision_api_pb2,
    beam_provision_api_pb2_grpc,
    beam_runner_api_pb2,
    endpoints_pb2,
)
from google.protobuf import json_format, text_format

STAGING_ROLE = "beam:artifact:role:staging_to:v1"
PACKAGE_SUFFIXES = (".tar.gz", ".zip", ".whl")


def parse_flags(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The flags every Beam boot program takes (unknown ones are ignored, as Beam's boot does)."""
    parser = argparse.ArgumentParser(description="SDK worker boot (installs the staged job)")
    for flag in ("id", "provision_endpoint", "artifact_endpoint", "control_endpoint", "logging_endpoint"):
        parser.add_argument(f"--{flag}", required=flag in ("id", "provision_endpoint"))
    parser.add_argument("--semi_persist_dir", default=None)
    args, _ = parser.parse_known_args(argv)
    return args


def fetch_artifacts(info: beam_provision_api_pb2.ProvisionInfo, endpoint: str, directory: str) -> List[str]:
    """Writes every staged artifact to ``directory`` under its staged name; returns paths."""
    channel = grpc.insecure_channel(endpoint)
    stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
    paths = []
    for artifact in info.dependencies:
        if artifact.role_urn != STAGING_ROLE:
            continue
        role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload)
        path = os.path.join(directory, os.path.basename(role.staged_name))
        with open(path, "wb") as f:
            for chunk in stub.GetArtifact(beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact)):
                f.write(chunk.data)
        paths.append(path)
    channel.close()
    return sorted(paths)


def install(paths: Sequence[str], site: str, log: IO[bytes]) -> None:
    """Installs staged packages (sdists, wheels) into ``site`` without touching dependencies.

    pip's output goes to ``log`` (the worker's boot log, opened in binary mode).
    """
    packages = [p for p in paths if p.endswith(PACKAGE_SUFFIXES)]
    requirements = [p for p in paths if os.path.basename(p) == "requirements.txt"]
    if packages:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-index", "--target", site, *packages],
            check=True, stdout=log, stderr=log,
        )
    for requirement in requirements:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "-r", requirement],
            check=True, stdout=log, stderr=log,
        )


def _descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Boots one SDK worker: fetch and install the staged job, then run the SDK harness."""
    args = parse_flags(argv)
    root = os.environ.get("MEDIABEAM_BOOT_DIR") or args.semi_persist_dir or tempfile.mkdtemp(prefix="mediabeam-boot-")
    work = os.path.join(root, args.id)
    staged, site = os.path.join(work, "staged"), os.path.join(work, "site")
    os.makedirs(staged, exist_ok=True)
    with open(os.path.join(work, "boot.log"), "ab") as log:
        channel = grpc.insecure_channel(args.provision_endpoint)
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        request = beam_provision_api_pb2.GetProvisionInfoRequest()
        info = stub.GetProvisionInfo(request, metadata=[("worker_id", args.id)]).info
        channel.close()
        paths = fetch_artifacts(info, args.artifact_endpoint or info.artifact_endpoint.url, staged)
        log.write(f"staged: {[os.path.basename(p) for p in paths]}\n".encode())
        log.flush()
        install(paths, site, log)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([site, *filter(None, [env.get("PYTHONPATH")])])
        control = args.control_endpoint or info.control_endpoint.url
        logging_url = args.logging_endpoint or info.logging_endpoint.url
        env.update({
            "WORKER_ID": args.id,
            "PIPELINE_OPTIONS": json.dumps(json_format.MessageToDict(info.pipeline_options)),
            "CONTROL_API_SERVICE_DESCRIPTOR": _descriptor(control),
            "LOGGING_API_SERVICE_DESCRIPTOR": _descriptor(logging_url),
            "SEMI_PERSISTENT_DIRECTORY": work,
            "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
        })
        where = subprocess.run(
            [sys.executable, "-c", "import pipelines; print(pipelines.__file__)"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()
        log.write(f"worker imports the job from {where}\n".encode())
        log.flush()
        return subprocess.call([sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"],
                               env=env, stdout=log, stderr=log)


if __name__ == "__main__":
    sys.exit(main())
