"""The step kinds (contract: "Orchestrations as workflows"): how a step decodes, each kind's
limits and defaults, the workflow-wide checks, output keeping and a check's goto. Pure: no Redis,
no worker."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskorch.errors import ValidationFailed
from taskorch.workflows.kinds import (
    OUTPUT_MAX_BYTES,
    GotoInvalid,
    MapItemsInvalid,
    MapStep,
    ParallelStep,
    SleepStep,
    SleepUntilStep,
    TaskStep,
    WaitStep,
    Workflow,
    decode_workflow,
    goto_target,
    keep_output,
    map_items,
)
from taskorch.workflows.refs import Context, ReferenceMissing, StepResult

URL = "https://t.example/x"
TASK = {"url": URL}


def _wf(*steps: Any, **body: Any) -> Workflow:
    return decode_workflow({"steps": list(steps), **body})


def _details(*steps: Any, **body: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationFailed) as info:
        _wf(*steps, **body)
    assert info.value.status_code == 422 and info.value.code == "validation_failed"
    return info.value.details


def _one(field: str, part: str, *steps: Any, **body: Any) -> None:
    details = _details(*steps, **body)
    assert [d["field"] for d in details] == [field], details
    assert part in details[0]["message"], details


# -- how a step decodes -----------------------------------------------------------------------------

KIND_ROWS = [
    (TASK, TaskStep, "task"),
    ({"url": URL, "name": "charge", "condition": {"url": URL}}, TaskStep, "task"),
    ({"parallel": [TASK, TASK]}, ParallelStep, "parallel"),
    ({"map": {"items": [1, 2], "task": TASK}}, MapStep, "map"),
    ({"sleep": 1.5}, SleepStep, "sleep"),
    ({"sleep_until": "2027-01-01T00:00:00Z"}, SleepUntilStep, "sleep"),
    ({"wait_for_event": "shipped", "timeout": 60}, WaitStep, "wait"),
]


@pytest.mark.parametrize(("data", "struct", "kind"), KIND_ROWS)
def test_a_step_decodes_as_its_kind(data: dict[str, Any], struct: type, kind: str) -> None:
    step = _wf(data).steps[0]
    assert type(step) is struct and step.kind == kind


def test_todays_orchestration_body_decodes_unchanged() -> None:
    wf = _wf(
        {"url": URL, "payload": {"a": 1}, "retries": 0},
        {"url": URL, "method": "GET", "condition": {"url": URL, "retries": 2}},
        condition={"url": URL},
        fallback={"url": URL},
        name="old",
        delay=5,
    )
    assert [type(s) for s in wf.steps] == [TaskStep, TaskStep]
    assert wf.body.input is None and wf.body.max_steps_run == 10_000
    assert wf.fallback is not None and wf.fallback.url == URL and wf.names == {}


MIXED_ROWS = [
    ({"url": URL, "sleep": 1}, "steps[0]", "url and sleep"),
    ({"parallel": [TASK, TASK], "map": {"items": [], "task": TASK}}, "steps[0]", "exactly one"),
    ({"sleep": 1, "sleep_until": "2027-01-01T00:00:00Z"}, "steps[0]", "exactly one"),
    ({"name": "a"}, "steps[0]", "must be a task spec (with url) or one of"),
    ("https://t.example", "steps[0]", "must be a JSON object"),
    ({"sleep": 1, "retries": 2}, "steps[0].retries", "not a known field"),
    ({"wait_for_event": "e", "bogus": 1}, "steps[0].bogus", "not a known field"),
    ({"map": {"items": [], "task": TASK, "extra": 1}}, "steps[0].map.extra", "not a known field"),
]


@pytest.mark.parametrize(("data", "field", "part"), MIXED_ROWS)
def test_a_step_that_is_not_exactly_one_kind_is_a_clear_422(
    data: Any, field: str, part: str
) -> None:
    _one(field, part, data)


# -- each kind's limits and defaults ----------------------------------------------------------------


def test_parallel_takes_2_to_100_calls_and_needs_all_by_default() -> None:
    step = _wf({"parallel": [TASK] * 100}).steps[0]
    assert isinstance(step, ParallelStep) and step.needed == 100
    _one("steps[0].parallel", "length >= 2", {"parallel": [TASK]})
    _one("steps[0].parallel", "length <= 100", {"parallel": [TASK] * 101})


@pytest.mark.parametrize(("n", "ok"), [(1, True), (3, True), (4, False), (0, False)])
def test_min_succeeded_is_1_to_the_number_of_calls(n: int, ok: bool) -> None:
    data = {"parallel": [TASK] * 3, "min_succeeded": n}
    if ok:
        step = _wf(data).steps[0]
        assert isinstance(step, ParallelStep) and step.needed == n
    else:
        assert _details(data)[0]["field"] == "steps[0].min_succeeded"


def test_a_parallel_calls_url_follows_the_url_rule() -> None:
    _one("steps[0].parallel[1].url", "http or https", {"parallel": [TASK, {"url": "ftp://x"}]})


def test_map_takes_0_to_10000_items_and_paces_at_10_by_default() -> None:
    step = _wf({"map": {"items": [], "task": TASK}}).steps[0]
    assert isinstance(step, MapStep) and step.map.max_concurrent == 10
    assert isinstance(_wf({"map": {"items": [0] * 10_000, "task": TASK}}).steps[0], MapStep)
    _one(
        "steps[0].map.items",
        "at most 10000 items, not 10001",
        {"map": {"items": [0] * 10_001, "task": TASK}},
    )


@pytest.mark.parametrize(("n", "ok"), [(1, True), (1000, True), (0, False), (1001, False)])
def test_max_concurrent_is_1_to_1000(n: int, ok: bool) -> None:
    data = {"map": {"items": [1], "task": TASK, "max_concurrent": n}}
    if ok:
        step = _wf(data).steps[0]
        assert isinstance(step, MapStep) and step.map.max_concurrent == n
    else:
        _one("steps[0].map.max_concurrent", "", data)


@pytest.mark.parametrize(
    ("items", "field", "part"),
    [
        ("{{ input.items }}", None, ""),
        ("{{ steps.a.output.list }}", None, ""),
        ("items: {{ input.items }}", "steps[1].map.items", "one reference to a list"),
        ("input.items", "steps[1].map.items", "one reference to a list"),
        ("{{ input[x] }}", "steps[1].map.items", "whole number"),
        ("{{ item }}", "steps[1].map.items", "inside a map's task"),
        ("{{ steps.b.output }}", "steps[1].map.items", "named 'b'"),
        (5, "steps[1].map.items", "must be a list, or one reference"),
        ({"a": 1}, "steps[1].map.items", "must be a list, or one reference"),
    ],
)
def test_map_items_is_a_list_or_one_reference(items: Any, field: str | None, part: str) -> None:
    steps = ({"name": "a", "url": URL}, {"map": {"items": items, "task": TASK}})
    if field is None:
        assert isinstance(_wf(*steps).steps[1], MapStep)
    else:
        _one(field, part, *steps)


def test_item_and_index_are_allowed_only_in_a_maps_task() -> None:
    task = {"url": URL + "/{{ index }}", "payload": {"i": "{{ item }}"}}
    assert isinstance(_wf({"map": {"items": [1], "task": task}}).steps[0], MapStep)
    details = _details({"url": URL, "payload": "{{ item }}"}, {"parallel": [task, TASK]})
    assert [d["field"] for d in details] == [
        "steps[0].payload",
        "steps[1].parallel[0].url",
        "steps[1].parallel[0].payload.i",
    ]
    assert all("only inside a map's task" in d["message"] for d in details)


def test_sleep_is_seconds_and_sleep_until_a_time_with_an_offset() -> None:
    step = _wf({"sleep": 0.25}).steps[0]
    assert isinstance(step, SleepStep) and step.sleep == 0.25
    until = _wf({"sleep_until": "2027-01-01T01:00:00+01:00"}).steps[0]
    assert isinstance(until, SleepUntilStep)
    assert until.sleep_until == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    _one("steps[0].sleep", "", {"sleep": -1})
    _one("steps[0].sleep", "", {"sleep": "soon"})
    _one("steps[0].sleep_until", "UTC offset", {"sleep_until": "2027-01-01T00:00:00"})
    _one("steps[0].sleep_until", "before 9999", {"sleep_until": "9999-06-01T00:00:00Z"})


def test_wait_for_event_defaults_and_rules() -> None:
    step = _wf({"wait_for_event": "order-shipped_2"}).steps[0]
    assert isinstance(step, WaitStep)
    assert (step.timeout, step.on_timeout) == (None, "fail")
    step = _wf({"wait_for_event": "e", "timeout": 30, "on_timeout": "continue"}).steps[0]
    assert isinstance(step, WaitStep) and (step.timeout, step.on_timeout) == (30, "continue")
    _one("steps[0].on_timeout", "", {"wait_for_event": "e", "on_timeout": "skip"})
    _one("steps[0].timeout", "", {"wait_for_event": "e", "timeout": -1})
    for bad in ("Shipped", "a b", "a/b", "x" * 65, ""):
        assert _details({"wait_for_event": bad})[0]["field"] == "steps[0].wait_for_event", bad


# -- names, input, max_steps_run --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "charge-1", "x_y", "0a", "a" * 64])
def test_a_good_step_name(name: str) -> None:
    assert _wf({"url": URL, "name": name}, {"sleep": 1, "name": "other"}).names[name] == 0


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("Charge", "a-z, 0-9"),
        ("a.b", "a-z, 0-9"),
        ("a b", "a-z, 0-9"),
        ("", "length >= 1"),
        ("a" * 65, "length <= 64"),
        ("7", "only digits"),  # steps.7 means the step at index 7
    ],
)
def test_a_bad_step_name_is_refused(name: str, part: str) -> None:
    _one("steps[0].name", part, {"url": URL, "name": name})
    _one("steps[0].name", part, {"sleep": 1, "name": name})


def test_step_names_are_unique_in_the_orchestration() -> None:
    _one("steps[2].name", "already the name of steps[0]", {"url": URL, "name": "a"}, TASK,
         {"wait_for_event": "e", "name": "a"})  # fmt: skip


def test_input_is_any_json_and_max_steps_run_defaults_to_10000() -> None:
    wf = _wf(TASK, input={"order": [1, "x", None]})
    assert wf.body.input == {"order": [1, "x", None]} and wf.body.max_steps_run == 10_000
    assert _wf(TASK, max_steps_run=5).body.max_steps_run == 5
    _one("max_steps_run", "", TASK, max_steps_run=0)


# -- references at create ---------------------------------------------------------------------------


def test_references_are_checked_with_the_field_path() -> None:
    details = _details(
        {"name": "charge", "url": URL, "payload": {"customer": "{{ input[x] }}"}},
        {"url": URL, "headers": {"X-C": "{{ steps.charge.output.id }}"}},
        {"url": URL, "payload": {"a": ["{{ steps.nope.output }}"]}},
        fallback={"url": URL, "payload": "{{ steps.9.status_code }}"},
    )
    assert [d["field"] for d in details] == [
        "steps[0].payload.customer",
        "steps[2].payload.a[0]",
        "fallback.payload",
    ]


def test_a_url_may_hold_references_and_its_literal_part_is_still_checked() -> None:
    wf = _wf(
        {"url": "{{ input.base }}/charge"},
        {"url": "https://{{ input.host }}:{{ input.port }}/x"},
        {"url": "https://t.example/{{ steps.0.output.id }}"},
        {"map": {"items": [1], "task": {"url": "{{ item }}"}}},
    )
    assert isinstance(wf.steps[0], TaskStep) and wf.steps[0].url == "{{ input.base }}/charge"
    _one("steps[0].url", "http or https", {"url": "ftp://{{ input.host }}/"})
    _one("steps[0].url", "must name a step", {"url": "{{ steps.x }}/a"})  # once, not twice


def test_a_reference_to_a_later_or_the_same_step_is_allowed() -> None:
    wf = _wf(
        {"name": "a", "url": URL, "payload": "{{ steps.b.output }}"},
        {"name": "b", "url": URL, "payload": "{{ steps.b.output }}"},
    )
    assert wf.names == {"a": 0, "b": 1}


def test_every_problem_is_reported_at_once() -> None:
    details = _details(
        {"url": URL, "sleep": 1},
        {"url": URL, "payload": "{{ item }}", "retries": -1},
        {"url": URL, "payload": "{{ item }}"},
    )
    assert [d["field"] for d in details] == ["steps[0]", "steps[1].retries", "steps[2].payload"]


def test_a_reference_to_a_step_that_failed_to_decode_is_not_also_unknown() -> None:
    details = _details({"name": "a", "sleep": "x"}, {"url": URL, "payload": "{{ steps.a.output }}"})
    assert [d["field"] for d in details] == ["steps[0].sleep"]


# -- map items at run time --------------------------------------------------------------------------


def test_map_items_resolve_when_the_step_starts() -> None:
    wf = _wf({"name": "a", "url": URL}, {"map": {"items": "{{ steps.a.output.l }}", "task": TASK}})
    step = wf.steps[1]
    assert isinstance(step, MapStep)
    ctx = Context("o", steps=[StepResult({"l": [1, 2, 3]}, 200)], names=wf.names)
    assert map_items(step, ctx) == [1, 2, 3]
    with pytest.raises(MapItemsInvalid, match="must name a list") as info:
        map_items(step, Context("o", steps=[StepResult({"l": "x"}, 200)], names=wf.names))
    assert info.value.code == "map_items_invalid"
    with pytest.raises(MapItemsInvalid, match="at most 10000"):
        map_items(step, Context("o", steps=[StepResult({"l": [0] * 10_001})], names=wf.names))
    with pytest.raises(ReferenceMissing):
        map_items(step, Context("o", steps=[StepResult({}, 200)], names=wf.names))
    listed = _wf({"map": {"items": [4, 5], "task": TASK}}).steps[0]
    assert isinstance(listed, MapStep) and map_items(listed, Context("o")) == [4, 5]


# -- outputs ----------------------------------------------------------------------------------------

OUTPUT_ROWS = [
    (b'{"id": 1}', "application/json", {"id": 1}),
    (b"[1,2]", "application/json; charset=utf-8", [1, 2]),
    (b'{"a":1}', "application/vnd.api+json", {"a": 1}),
    (b"42", None, 42),  # no content type: JSON when it parses
    (b"42", "", 42),
    (b"42", "text/plain", "42"),  # a declared non-JSON type stays text
    (b"<p>hi</p>", "text/html", "<p>hi</p>"),
    (b"not json", "application/json", "not json"),  # says JSON, is not: text
    (b"", "application/json", None),  # nothing: null
    (b"  \n", None, None),
    (b"caf\xc3\xa9", "text/plain", "café"),
    (b"\xff\xfe", "text/plain", "\ufffd\ufffd"),
]


@pytest.mark.parametrize(("body", "ctype", "value"), OUTPUT_ROWS)
def test_a_step_output_is_json_when_it_is_json_else_text(
    body: bytes, ctype: str | None, value: Any
) -> None:
    assert keep_output(body, ctype) == (value, False)


def test_an_output_over_64_kib_is_cut_and_marked_truncated() -> None:
    exact = b'"' + b"a" * (OUTPUT_MAX_BYTES - 2) + b'"'
    assert keep_output(exact, "application/json") == ("a" * (OUTPUT_MAX_BYTES - 2), False)
    big = b"[" + b'"\xc3\xa9",' * 20_000 + b"1]"
    value, truncated = keep_output(big, "application/json")
    assert truncated and isinstance(value, str)
    assert len(value.encode()) <= OUTPUT_MAX_BYTES and "\ufffd" not in value
    assert big.decode().startswith(value)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([None, "application/json", "text/plain"]))
def test_any_body_is_kept_as_something_json_can_store(body: bytes, ctype: str | None) -> None:
    value, truncated = keep_output(body, ctype)
    assert not truncated
    msgspec.json.encode(value)


# -- goto -------------------------------------------------------------------------------------------

NAMES = {"charge": 0, "retry-pay": 3}


@pytest.mark.parametrize(
    ("body", "index"),
    [
        (b'{"goto": "retry-pay"}', 3),
        (b'{"goto": "charge", "note": 1}', 0),
        (b'{"goto": null}', None),
        (b"{}", None),
        (b"true", None),
        (b"", None),
        (b"goto", None),  # text, not JSON
        (b'["goto"]', None),
    ],
)
def test_a_passed_checks_goto_names_the_next_step(body: bytes, index: int | None) -> None:
    assert goto_target(body, NAMES) == index


@pytest.mark.parametrize("body", [b'{"goto": "nope"}', b'{"goto": 3}', b'{"goto": ["charge"]}'])
def test_a_goto_to_no_step_is_a_clear_error(body: bytes) -> None:
    with pytest.raises(GotoInvalid, match="names no step") as info:
        goto_target(body, NAMES)
    assert info.value.code == "goto_unknown"
    assert "charge, retry-pay" in info.value.message


# -- no body makes anything but a 422 -----------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 20_000)
    | st.floats(-1, 1e3)
    | st.sampled_from(
        [
            "",
            "x",
            URL,
            "ftp://x",
            "{{ input }}",
            "{{ item }}",
            "{{ steps.a }}",
            "{{ steps.a.output }}",
            "{{ input.base }}/x",
            "a",
            "7",
            "Shipped",
            "2027-01-01T00:00:00Z",
            "2027-01-01T00:00:00",
        ]
    )
)
_ANY = st.recursive(
    _SCALARS,
    lambda x: (
        st.lists(x, max_size=3)
        | st.dictionaries(st.sampled_from(["url", "name", "payload", "x"]), x, max_size=3)
    ),
    max_leaves=6,
)
_FIELDS = st.sampled_from(
    [
        "url",
        "name",
        "payload",
        "headers",
        "retries",
        "condition",
        "parallel",
        "map",
        "sleep",
        "sleep_until",
        "wait_for_event",
        "timeout",
        "on_timeout",
        "min_succeeded",
        "items",
        "task",
        "max_concurrent",
        "method",
        "bogus",
    ]
)
_STEP = st.dictionaries(
    _FIELDS,
    _ANY | st.just(TASK) | st.just([TASK, TASK]) | st.just({"items": "{{ input }}", "task": TASK}),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_STEP | _ANY, min_size=0, max_size=4), _ANY)
def test_any_body_decodes_or_is_a_422_with_field_paths(steps: list[Any], fallback: Any) -> None:
    body: dict[str, Any] = {"steps": steps}
    if fallback is not None:
        body["fallback"] = fallback
    try:
        wf = decode_workflow(body)
    except ValidationFailed as exc:
        assert exc.details and all(set(d) == {"field", "message"} for d in exc.details)
        return
    assert len(wf.steps) == len(steps)
