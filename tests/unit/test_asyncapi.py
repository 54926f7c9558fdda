"""The AsyncAPI document is built from `contracts/` and agrees with what the services answer."""

import json
import typing
from typing import Any

import pytest

from contracts import asyncapi, subjects
from contracts.registry import Reply
from services.history import handlers as history_handlers
from services.history.handlers import Queries
from services.registry import handlers as registry_handlers
from services.registry.core import Registry

ADDRESSES = {channel.address: channel for channel in asyncapi.CHANNELS}


def test_the_checked_in_asyncapi_document_is_current() -> None:
    assert asyncapi.CHECKED_IN.read_text() == asyncapi.render(), (
        "contracts/asyncapi.json is stale: run `make asyncapi` and commit it"
    )


def test_every_request_subject_and_bucket_of_the_contracts_has_a_channel() -> None:
    prefixes = tuple(
        f"{prefix}."
        for prefix in (subjects.REGISTRY_PREFIX, subjects.HISTORY_PREFIX, subjects.RUNNER_PREFIX)
    )
    constants = {name: value for name, value in vars(subjects).items() if isinstance(value, str)}
    requests = [value for value in constants.values() if value.startswith(prefixes)]
    buckets = [value for name, value in constants.items() if name.endswith("_BUCKET")]
    assert len(requests) >= 19
    assert len(buckets) == 9
    expected = [
        *requests,
        *(f"{asyncapi.KV_PREFIX}.{bucket}.{{key}}" for bucket in buckets),
        subjects.FLOW_START_UNVERSIONED,
        subjects.flow_start("{workspace_id}"),
        subjects.dead_letter("{source_subject}"),
        subjects.run_event("{workspace_id}", "{run_id}", "{status}"),
        subjects.schedule_timer("{trigger_id}"),
        subjects.schedule_tick("{trigger_id}"),
        subjects.schedule_fire("{workspace_id}", "{trigger_id}"),
    ]
    assert [address for address in expected if address not in ADDRESSES] == []


def _reply_of(handle: Any) -> Any:
    answer = typing.get_type_hints(handle)["return"]
    return None if answer is type(None) else Reply[answer]


@pytest.mark.parametrize(
    "table",
    [
        {s: (r.request_type, r.handle) for s, r in registry_handlers.routes(Registry).items()},  # type: ignore[arg-type]
        history_handlers.routes(Queries),  # type: ignore[arg-type]
    ],
    ids=["registry", "history"],
)
def test_each_request_channel_takes_and_answers_what_its_service_does(
    table: dict[str, tuple[type, Any]],
) -> None:
    for subject, (request_type, handle) in table.items():
        channel = ADDRESSES[subject]
        assert [m.type for m in channel.messages] == [request_type], subject
        answered = None if channel.reply is None else channel.reply.type
        assert answered == _reply_of(handle), subject
        assert channel.queue is not None, f"{subject} is answered in a queue group"


def test_every_reference_in_the_document_resolves() -> None:
    document = asyncapi.document()
    references: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("$ref"), str):
                references.append(value["$ref"])
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    collect(document)
    assert references
    for reference in references:
        node: Any = document
        for part in reference.removeprefix("#/").split("/"):
            assert part in node, f"{reference} does not resolve"
            node = node[part]
    assert document["asyncapi"] == "3.0.0"
    json.dumps(document)  # plain JSON values only
