"""Uses the Python client that scripts/openapi-clients.sh generates from the API's OpenAPI
document: mypy --strict checks it against the generated types, then running it parses every
example in the document with the generated models.

Usage: python usage.py OPENAPI_JSON (with the generated package `ocr_fleet_client` importable).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ocr_fleet_client import AuthenticatedClient
from ocr_fleet_client.api.default import create_job, delete_job, get_job
from ocr_fleet_client.models import (
    ContentType,
    CreateJobRequest,
    ErrorResponse,
    ErrorCode,
    Job,
    JobStatus,
    Priority,
)


def create(client: AuthenticatedClient) -> Job | ErrorResponse | None:
    """Never called: mypy checks the operation's signature and answer types."""
    request = CreateJobRequest(content_type=ContentType.IMAGEPNG, content_length=10, priority=Priority.EXPRESS)
    answer = create_job.sync(client=client, body=request, idempotency_key="order-42")
    if isinstance(answer, Job):
        return get_job.sync(answer.job_id, client=client) or delete_job.sync(answer.job_id, client=client)
    return answer


def should_retry(error: ErrorResponse) -> bool:
    retryable: bool = error.error.retryable
    code: ErrorCode = error.error.code
    return retryable or code is ErrorCode.QUEUE_FULL


def examples(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every JSON example under components.responses, with where it is."""
    found = []
    for name, response in document["components"]["responses"].items():
        for media_type, content in response.get("content", {}).items():
            for example_name, example in content.get("examples", {}).items():
                if media_type == "application/json":
                    found.append((f"{name}/{example_name}", example["value"]))
    return found


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    checked = 0
    for where, value in examples(document):
        error = ErrorResponse.from_dict(value)
        assert error.to_dict() == value, f"{where}: {error.to_dict()} != {value}"
        should_retry(error)
        checked += 1
    box = [[0, 0], [9, 0], [9, 3], [0, 3]]
    line = {"text": "HELLO", "confidence": 0.9, "box": box, "words": [{"text": "HELLO", "confidence": 0.9, "box": box}]}
    job = {
        "job_id": "0123456789abcdef0123456789abcdef",
        "status": "succeeded",
        "priority": "bulk",
        "content_type": "image/png",
        "content_length": 1234,
        "attempts": 1,
        "created_at": "2026-01-02T03:04:05Z",
        "updated_at": "2026-01-02T03:04:09.5Z",
        "finished_at": "2026-01-02T03:04:09.5Z",
        "metadata": {"order": 42},
        "result": {
            "text": "HELLO",
            "lines": [line],
            "width": 10,
            "height": 4,
            "seconds": 0.1,
            "pages": [{"page": 1, "width": 10, "height": 4, "text": "HELLO", "lines": [line]}],
        },
    }
    parsed = Job.from_dict(job)
    assert parsed.status is JobStatus.SUCCEEDED
    assert parsed.to_dict()["result"] == job["result"]
    print(f"python client: {checked} error examples and a job parsed by the generated models")


if __name__ == "__main__":
    main(sys.argv[1])
