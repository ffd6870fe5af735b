"""What the broker learns of a node's work from the API node's calls, and how a switch carries it."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from services.broker.node_store import memory_store
from services.broker.node_work import (
    MAX_BODY_BYTES,
    CannotCarry,
    NodeWork,
    NodeWorks,
    Reinit,
    Serve,
    StayStopped,
    WorkKind,
    carry_for,
    refine,
    unseen_work,
    work_after_call,
)
from shared.kv_document import ModelCodec

API = "/api/v1"
CALLBACK = "http://api-node.internal:9100/v1/poc-batches?node=n1&x=%2F"
POW_BODY: dict[str, object] = {
    "url": CALLBACK,
    "block_hash": "0xabc",
    "block_height": 12000,
    "public_key": "pk",
    "params": {"dim": 4096, "n_layers": 32, "seq_len": 256},
    "node_id": 3,
    "node_count": 8,
}
TRAIN_BODY: dict[str, object] = {"train_config": {"lr": 0.0001}, "train_env": {"WORLD_SIZE": "1"}}
CONFIGURED = ("Qwen/Qwen2.5-7B-Instruct", ("--max-model-len", "4096"))

INFERENCE = NodeWork(kind=WorkKind.INFERENCE, model="m", args=("--x",), route=f"{API}/inference/up")
POW = NodeWork(kind=WorkKind.POW, params=POW_BODY, route=f"{API}/pow/init")
GENERATE = NodeWork(kind=WorkKind.POW_GENERATE, params=POW_BODY, route=f"{API}/pow/init/generate")
VALIDATE = NodeWork(kind=WorkKind.POW_VALIDATE, params=POW_BODY, route=f"{API}/pow/init/validate")
TRAIN = NodeWork(kind=WorkKind.TRAIN, params=TRAIN_BODY, route=f"{API}/train/start")
STOPPED = NodeWork(kind=WorkKind.STOPPED, route=f"{API}/stop")
EVERY_WORK: list[NodeWork | None] = [None, INFERENCE, POW, GENERATE, VALIDATE, TRAIN, STOPPED]


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def post(before: NodeWork | None, route: str, content: bytes = b"") -> NodeWork | None:
    return work_after_call(before, "POST", f"{API}/{route}", content)


# --- work_after_call: stop and inference ------------------------------------------------------------


@pytest.mark.parametrize("before", EVERY_WORK)
def test_stop_stops_whatever_ran(before: NodeWork | None) -> None:
    assert post(before, "stop") == NodeWork(kind=WorkKind.STOPPED, route=f"{API}/stop")


@pytest.mark.parametrize("route", ["inference/up", "inference/up/async"])
def test_inference_up_records_model_args_and_dtype(route: str) -> None:
    content = body({"model": "org/m", "additional_args": ["--tp", "2"], "dtype": "bfloat16"})
    assert post(STOPPED, route, content) == NodeWork(
        kind=WorkKind.INFERENCE,
        model="org/m",
        args=("--tp", "2"),
        dtype="bfloat16",
        route=f"{API}/{route}",
    )


def test_inference_up_without_args_or_dtype_keeps_the_broker_defaults() -> None:
    work = post(None, "inference/up", body({"model": "org/m", "additional_args": None}))
    assert work is not None and work.args == () and work.dtype is None


def test_a_non_string_dtype_is_dropped_not_guessed() -> None:
    work = post(None, "inference/up", body({"model": "org/m", "dtype": 16}))
    assert work is not None and work.model == "org/m" and work.dtype is None


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"\xff\xfe",
        body([{"model": "m"}]),
        body("m"),
        body(None),
        b"",
        body({}),
        body({"model": 7}),
        body({"model": None}),
        body({"model": "m", "additional_args": "--tp 2"}),
        body({"model": "m", "additional_args": ["--tp", 2]}),
        body({"model": "m", "filler": "x" * MAX_BODY_BYTES}),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "array",
        "string",
        "null",
        "empty",
        "no-model",
        "model-not-str",
        "model-null",
        "args-not-list",
        "args-not-str",
        "oversized",
    ],
)
@pytest.mark.parametrize("route", ["inference/up", "inference/up/async"])
def test_an_unreadable_inference_body_changes_nothing(route: str, content: bytes) -> None:
    assert post(INFERENCE, route, content) is None


def test_the_size_limit_is_on_the_body_not_below_it() -> None:
    padding = MAX_BODY_BYTES - len(body({"model": "m", "p": ""}))
    content = body({"model": "m", "p": "x" * padding})
    assert len(content) == MAX_BODY_BYTES
    assert post(None, "inference/up", content) is not None
    assert post(None, "inference/up", content + b" ") is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "m" * 2000), ("dtype", "d" * 100)],
)
def test_an_overlong_model_or_dtype_is_an_unreadable_body_not_an_error(field: str, value: str) -> None:
    """The MLNode already answered 2xx: recording must not raise (the endpoint would turn it into a 500)."""
    content = body({"model": "m", "dtype": "bfloat16", field: value})
    try:
        work = post(None, "inference/up", content)
    except ValidationError as exc:  # the bug: NodeWork's max_length escapes as an exception
        pytest.fail(f"work_after_call raised for an overlong {field}: {exc.errors()[0]['msg']}")
    assert work is None


# --- work_after_call: PoC ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "kind"),
    [
        ("pow/init", WorkKind.POW),
        ("pow/init/generate", WorkKind.POW_GENERATE),
        ("pow/init/validate", WorkKind.POW_VALIDATE),
    ],
)
@pytest.mark.parametrize("before", EVERY_WORK)
def test_pow_init_records_the_body_as_params(route: str, kind: WorkKind, before: NodeWork | None) -> None:
    work = post(before, route, body(POW_BODY))
    assert work == NodeWork(kind=kind, params=POW_BODY, route=f"{API}/{route}")
    assert work.params is not None and work.params["url"] == CALLBACK  # the API node's own callback


@pytest.mark.parametrize("route", ["pow/init", "pow/init/generate", "pow/init/validate", "train/start"])
@pytest.mark.parametrize("content", [b"{", body([1, 2]), b"x" * (MAX_BODY_BYTES + 1)])
def test_an_unreadable_init_body_changes_nothing(route: str, content: bytes) -> None:
    assert post(INFERENCE, route, content) is None


@pytest.mark.parametrize(
    ("route", "kind"),
    [("pow/phase/generate", WorkKind.POW_GENERATE), ("pow/phase/validate", WorkKind.POW_VALIDATE)],
)
@pytest.mark.parametrize("before", [POW, GENERATE, VALIDATE])
def test_a_phase_change_in_pow_keeps_the_init_params(route: str, kind: WorkKind, before: NodeWork) -> None:
    work = post(before, route, body({"ignored": True}))
    assert work is not None and work.kind is kind and work.params == POW_BODY
    assert work.route == f"{API}/{route}"


@pytest.mark.parametrize("route", ["pow/phase/generate", "pow/phase/validate"])
@pytest.mark.parametrize("before", [None, INFERENCE, TRAIN, STOPPED])
def test_a_phase_change_outside_pow_changes_nothing(route: str, before: NodeWork | None) -> None:
    assert post(before, route) is None


# --- work_after_call: the service-specific stops ---------------------------------------------------


@pytest.mark.parametrize(
    ("route", "ends"),
    [
        ("pow/stop", {WorkKind.POW, WorkKind.POW_GENERATE, WorkKind.POW_VALIDATE}),
        ("inference/down", {WorkKind.INFERENCE, None}),  # never told: it served the configured model
        ("train/stop", {WorkKind.TRAIN}),
    ],
)
@pytest.mark.parametrize("before", EVERY_WORK)
def test_a_service_stop_ends_only_its_own_service(
    route: str, ends: set[WorkKind | None], before: NodeWork | None
) -> None:
    after = post(before, route)
    if (before.kind if before else None) in ends:
        assert after == NodeWork(kind=WorkKind.STOPPED, route=f"{API}/{route}")
    else:
        assert after is None


def test_train_start_records_the_body() -> None:
    assert post(INFERENCE, "train/start", body(TRAIN_BODY)) == TRAIN


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
@pytest.mark.parametrize(
    "route", ["stop", "inference/up", "pow/init/generate", "pow/phase/validate", "pow/stop", "train/start"]
)
def test_only_a_post_changes_the_work(method: str, route: str) -> None:
    assert work_after_call(GENERATE, method, f"{API}/{route}", body({"model": "m", **POW_BODY})) is None


def test_the_method_is_case_insensitive() -> None:
    assert work_after_call(INFERENCE, "post", f"{API}/stop", b"") == STOPPED


@pytest.mark.parametrize(
    "route", [f"{API}/state", f"{API}/pow/status", f"{API}/health", f"{API}/stop/", "/api/v2/stop", "/stop"]
)
def test_other_routes_change_nothing(route: str) -> None:
    assert work_after_call(GENERATE, "POST", route, b"{}") is None


# --- refine and unseen_work -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pow_status", "kind"),
    [("GENERATING", WorkKind.POW_GENERATE), ("VALIDATING", WorkKind.POW_VALIDATE)],
)
@pytest.mark.parametrize("recorded", [POW, GENERATE, VALIDATE])
def test_the_pow_phase_comes_from_the_old_version(
    pow_status: str, kind: WorkKind, recorded: NodeWork
) -> None:
    refined = refine(recorded, "POW", pow_status)
    assert refined is not None and refined.kind is kind
    assert refined.params == POW_BODY and refined.route == recorded.route


@pytest.mark.parametrize(("state", "pow_status"), [("POW", "IDLE"), ("POW", None), ("POW", "NOT_LOADED")])
def test_a_pow_status_without_a_phase_keeps_the_recorded_one(state: str, pow_status: str | None) -> None:
    assert refine(GENERATE, state, pow_status) == GENERATE


@pytest.mark.parametrize("state", ["INFERENCE", "STOPPED", "TRAIN", "UNKNOWN"])
def test_the_phase_is_only_taken_when_the_old_version_is_in_pow(state: str) -> None:
    assert refine(GENERATE, state, "VALIDATING") == GENERATE


@pytest.mark.parametrize("recorded", [None, INFERENCE, TRAIN, STOPPED])
def test_work_other_than_pow_is_what_the_api_node_asked_for(recorded: NodeWork | None) -> None:
    assert refine(recorded, "POW", "VALIDATING") == recorded


@pytest.mark.parametrize("state", ["POW", "TRAIN"])
def test_work_started_before_the_broker_saw_it_is_unseen(state: str) -> None:
    reason = unseen_work(None, state)
    assert reason is not None and state in reason and "unknown" in reason


@pytest.mark.parametrize("state", ["INFERENCE", "STOPPED", "POW", "TRAIN"])
@pytest.mark.parametrize("recorded", [INFERENCE, GENERATE, TRAIN, STOPPED])
def test_recorded_work_is_never_unseen(state: str, recorded: NodeWork) -> None:
    assert unseen_work(recorded, state) is None


@pytest.mark.parametrize("state", ["INFERENCE", "STOPPED"])
def test_no_record_and_serving_or_stopped_is_not_unseen(state: str) -> None:
    assert unseen_work(None, state) is None


# --- carry_for --------------------------------------------------------------------------------------


def test_no_work_serves_the_configured_model_with_the_default_dtype() -> None:
    assert carry_for(None, CONFIGURED) == Serve(CONFIGURED[0], CONFIGURED[1], None)


def test_no_work_and_no_model_brings_nothing_up() -> None:
    assert carry_for(None, None) is None


@pytest.mark.parametrize("configured", [CONFIGURED, None])
def test_inference_serves_its_own_model_not_the_configured_one(
    configured: tuple[str, tuple[str, ...]] | None,
) -> None:
    work = NodeWork(kind=WorkKind.INFERENCE, model="org/other", args=("--tp", "2"), dtype="float16")
    assert carry_for(work, configured) == Serve("org/other", ("--tp", "2"), "float16")


@pytest.mark.parametrize(
    ("work", "route"),
    [
        (POW, f"{API}/pow/init"),
        (GENERATE, f"{API}/pow/init/generate"),
        (VALIDATE, f"{API}/pow/init/validate"),
        (TRAIN, f"{API}/train/start"),
    ],
)
def test_pow_and_training_are_initialised_again_with_the_same_body(work: NodeWork, route: str) -> None:
    carry = carry_for(work, CONFIGURED)
    assert carry == Reinit(work.kind, route, dict(work.params or {}))


def test_a_generate_recorded_by_a_phase_change_is_initialised_as_generate() -> None:
    """pow/init then pow/phase/generate: the new version gets init/generate with the init body."""
    work = post(post(None, "pow/init", body(POW_BODY)), "pow/phase/generate")
    carry = carry_for(work, CONFIGURED)
    assert isinstance(carry, Reinit) and carry.route == f"{API}/pow/init/generate"
    assert carry.body == POW_BODY and carry.body["url"] == CALLBACK


def test_a_validate_the_old_version_moved_on_to_is_initialised_as_validate() -> None:
    carry = carry_for(refine(GENERATE, "POW", "VALIDATING"), CONFIGURED)
    assert carry == Reinit(WorkKind.POW_VALIDATE, f"{API}/pow/init/validate", POW_BODY)


@pytest.mark.parametrize("configured", [CONFIGURED, None])
def test_stopped_stays_stopped_even_with_a_model_configured(
    configured: tuple[str, tuple[str, ...]] | None,
) -> None:
    assert carry_for(STOPPED, configured) == StayStopped()


def test_carry_is_never_cannot_carry_by_itself() -> None:
    """CannotCarry is the handoff's verdict from the old version's state, not `carry_for`'s."""
    for work in EVERY_WORK:
        assert not isinstance(carry_for(work, CONFIGURED), CannotCarry)


# --- NodeWorks and persistence ----------------------------------------------------------------------


def test_node_works_with_and_without_do_not_change_the_original() -> None:
    empty = NodeWorks()
    one = empty.with_work("a", GENERATE)
    two = one.with_work("b", STOPPED).with_work("a", TRAIN)
    assert empty.get("a") is None and one.get("a") == GENERATE
    assert two.get("a") == TRAIN and two.get("b") == STOPPED
    assert two.without("a") == NodeWorks(nodes={"b": STOPPED})
    assert two.without("missing") == two
    assert one.get("a") == GENERATE


def test_node_works_round_trip_through_the_stored_format() -> None:
    codec = ModelCodec(NodeWorks, 1)
    works = NodeWorks(nodes={"a": GENERATE, "b": INFERENCE, "c": TRAIN, "d": STOPPED})
    encoded = codec.encode(works)
    assert json.loads(encoded)["format"] == 1
    decoded = codec.decode(encoded)
    assert decoded == works
    assert decoded.nodes["a"].params is not None and decoded.nodes["a"].params["url"] == CALLBACK
    assert decoded.nodes["b"].args == ("--x",)  # a tuple again, not a list


async def test_the_memory_store_keeps_the_work_document() -> None:
    store = memory_store()
    assert await store.work.load() == NodeWorks()
    await store.work.mutate(lambda works: works.with_work("a", GENERATE))
    assert (await store.work.load()).get("a") == GENERATE
