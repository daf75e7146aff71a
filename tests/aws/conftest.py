"""An AWS API emulator over HTTP for the adapter tests: moto's server on a free port, or LocalStack.

RADSTREAM_EMULATOR=localstack starts LocalStack through testcontainers instead (a Docker engine is needed;
the tests skip, saying why, where there is none). Every test gets a fresh emulator state and an
environment that points boto3 at it: AWS_ENDPOINT_URL, fake credentials, a region.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

REGION = "eu-west-1"
READY_DEADLINE_S = 20.0


@dataclass(frozen=True)
class Emulator:
    name: str
    endpoint: str

    def client(self, service: str) -> Any:
        import boto3

        return boto3.session.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing").client(
            service, endpoint_url=self.endpoint
        )

    def reset(self) -> None:
        if self.name == "moto":
            urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=5).close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    delay = 0.02
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            if isinstance(e, urllib.error.HTTPError):
                return  # it answered: the server is up
            if time.monotonic() > deadline:
                raise TimeoutError(f"the emulator at {url} was not ready within {deadline_s:.0f} s") from e
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _moto() -> Iterator[Emulator]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_ready(f"{endpoint}/moto-api/", READY_DEADLINE_S)
        yield Emulator("moto", endpoint)
    finally:
        server.stop()


def _localstack() -> Iterator[Emulator]:
    try:
        from testcontainers.localstack import LocalStackContainer  # imported here: only this opt-in needs it
    except ImportError:
        pytest.skip("RADSTREAM_EMULATOR=localstack needs the testcontainers package (pip install 'testcontainers[localstack]')")
    try:
        import docker

        docker.from_env().ping()
    except Exception as e:
        pytest.skip(f"RADSTREAM_EMULATOR=localstack needs a Docker engine: {type(e).__name__}")
    container = LocalStackContainer(image=os.environ.get("LOCALSTACK_IMAGE", "localstack/localstack:4")).with_services(
        "s3", "kinesis", "events", "sqs"
    )
    container.start()
    try:
        endpoint = container.get_url()
        _wait_ready(f"{endpoint}/_localstack/health", 120.0)
        yield Emulator("localstack", endpoint)
    finally:
        container.stop()


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[Emulator]:
    choice = os.environ.get("RADSTREAM_EMULATOR", "moto")
    if choice not in ("moto", "localstack"):
        raise pytest.UsageError(f"RADSTREAM_EMULATOR={choice!r}: expected moto or localstack")
    yield from (_localstack() if choice == "localstack" else _moto())


@pytest.fixture
def emulator(emulator_server: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """A clean emulator, with boto3 pointed at it through the environment (as shared.wiring builds clients)."""
    emulator_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return emulator_server


@pytest.fixture
def bucket(emulator: Emulator) -> str:
    name = "radstream-test-bucket"
    emulator.client("s3").create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


def queue_athena_rows(emulator: Emulator, columns: list[tuple[str, str]], rows: list[list[str]]) -> None:
    """Queue the answer moto's Athena gives the next query (through moto's API): a header row, then `rows`."""
    client = emulator.client("athena")
    queued = {
        "account_id": "123456789012",
        "region": client.meta.region_name,
        "results": [
            {
                "rows": [{"Data": [{"VarCharValue": v} for v in row]} for row in [[n for n, _ in columns], *rows]],
                "column_info": [
                    {
                        "Name": n,
                        "Type": t,
                        "CatalogName": "hive",
                        "SchemaName": "",
                        "TableName": "",
                        "Label": n,
                        "Precision": 0,
                        "Scale": 0,
                        "Nullable": "UNKNOWN",
                        "CaseSensitive": False,
                    }
                    for n, t in columns
                ],
            }
        ],
    }
    request = urllib.request.Request(
        f"{emulator.endpoint}/moto-api/static/athena/query-results", data=json.dumps(queued).encode(), method="POST"
    )
    urllib.request.urlopen(request, timeout=5).close()
