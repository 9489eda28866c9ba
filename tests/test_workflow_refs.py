"""References (contract: "Orchestrations as workflows", **References**): parsing, the create-time
check, and resolution from a context, each rule a table row. Pure: no Redis, no worker."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskorch.models import parse_json
from taskorch.workflows.refs import (
    Context,
    Plan,
    Ref,
    ReferenceMissing,
    ReferenceSyntaxError,
    ResolvedHeaderInvalid,
    ResolvedUrlInvalid,
    ResolveError,
    StepResult,
    check_strings,
    parse,
    parse_path,
    spec_strings,
    unparse,
)

URL = "https://t.example"

# -- parsing ----------------------------------------------------------------------------------------

PATHS_GOOD = [
    ("input", Ref("input")),
    ("  input  ", Ref("input")),  # whitespace inside the braces
    ("input.customer.id", Ref("input", parts=("customer", "id"))),
    ("input.items[0].sku", Ref("input", parts=("items", 0, "sku"))),
    ("input[2][3]", Ref("input", parts=(2, 3))),
    ("steps.charge.output", Ref("steps", "charge", "output")),
    ("steps.charge.output.id", Ref("steps", "charge", "output", ("id",))),
    ("steps.0.output[1]", Ref("steps", 0, "output", (1,))),
    ("steps.charge.status_code", Ref("steps", "charge", "status_code")),
    ("steps.12.status_code", Ref("steps", 12, "status_code")),
    ("item", Ref("item")),
    ("item.name", Ref("item", parts=("name",))),
    ("index", Ref("index")),
    ("orchestration_id", Ref("orchestration_id")),
    ("input.a-b_c", Ref("input", parts=("a-b_c",))),
]

PATHS_BAD = [
    ("steps", "must name a step"),
    ("steps.charge", "must name a step"),
    ("steps.charge.result", "must name a step"),
    ("steps.Charge.output", "must name a step"),
    ("steps." + "a" * 65 + ".output", "must name a step"),
    ("input.", "expected .key or [n]"),
    ("input..a", "expected .key or [n]"),
    ("input . a", "expected .key or [n]"),
    ("input x", "expected .key or [n]"),
    ("input[x]", "must hold a whole number"),
    ("input[-1]", "must hold a whole number"),
    ("input[]", "must hold a whole number"),
    ("index.x", "index is not a list or object"),
    ("orchestration_id[0]", "orchestration_id is not a list or object"),
    ("steps.a.status_code.x", "status_code is not a list or object"),
]


@pytest.mark.parametrize(("text", "ref"), PATHS_GOOD)
def test_a_well_formed_path_parses(text: str, ref: Ref) -> None:
    assert parse_path(text) == ref
    assert parse("{{" + text + "}}") is not None


@pytest.mark.parametrize(("text", "message"), PATHS_BAD)
def test_an_ill_formed_path_is_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(ReferenceSyntaxError, match=re.escape(message)):
        parse("{{ " + text + " }}")


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "{{ name }}",  # a Mustache template for the target: not a reference, sent as it is
        "Hello {{user.name}}, {{#items}}x{{/items}}",
        "{{ inputs.x }}",  # the root must be a whole word
        "{{ input_x }}",
        "{{ items }}",
        "{ { input } }",
        "{{ input",  # never closed
    ],
)
def test_braces_without_a_root_are_literal_text(text: str) -> None:
    assert parse(text) is None
    ctx = Context("orc_1", input={"x": 1})
    assert Plan("https://t.example", {}, {"v": text}).resolve(ctx).payload == {"v": text}


def test_exactly_one_reference_is_whole_and_a_longer_string_is_mixed() -> None:
    whole = parse("{{ input.a }}")
    assert whole is not None and whole.whole
    for text in (" {{ input.a }}", "{{ input.a }} ", "x{{ input.a }}", "{{ input }}{{ index }}"):
        mixed = parse(text)
        assert mixed is not None and not mixed.whole, text


@given(st.sampled_from([r for _, r in PATHS_GOOD]))
def test_unparse_parses_back_to_the_same_reference(ref: Ref) -> None:
    template = parse(unparse(ref))
    assert template is not None and template.whole and template.pieces == (ref,)


# -- the create-time check --------------------------------------------------------------------------

NAMES = {"charge": 0, "ship": 1}


def _problems(payload: Any, *, in_map: bool = False, url: str = "https://t.example") -> list[Any]:
    found = spec_strings(url, {"X-Ref": "{{ input.k }}"}, payload, "steps[2]")
    return check_strings(found, names=NAMES, n_steps=3, in_map=in_map)


CHECK_ROWS = [
    # (payload, in_map, expected problems' field and a part of the message)
    ({"a": "{{ input.x }}"}, False, []),
    ({"a": "{{ steps.ship.output }}"}, False, []),  # a later step: goto can run it first
    ({"a": "{{ steps.2.output }}"}, False, []),  # the step itself (a loop's earlier run)
    ({"a": "{{ steps.nope.output }}"}, False, [("steps[2].payload.a", "named 'nope'")]),
    ({"a": "{{ steps.3.output }}"}, False, [("steps[2].payload.a", "has 3 steps (0 to 2)")]),
    ({"a": ["x", {"b": "{{ item }}"}]}, False, [("steps[2].payload.a[1].b", "inside a map")]),
    ({"a": "n{{ index }}"}, False, [("steps[2].payload.a", "map's current index")]),
    ({"a": "{{ item.x }} {{ index }}"}, True, []),
    ({"customer": "{{ input[x] }}"}, False, [("steps[2].payload.customer", "whole number")]),
    ("{{ steps.a }}", False, [("steps[2].payload", "must name a step")]),
    ({"{{ item }}": 1}, False, []),  # object keys are not resolved
]


@pytest.mark.parametrize(("payload", "in_map", "expected"), CHECK_ROWS)
def test_the_create_check_names_the_field_and_the_problem(
    payload: Any, in_map: bool, expected: list[tuple[str, str]]
) -> None:
    found = _problems(payload, in_map=in_map)
    assert [f for f, _ in found] == [f for f, _ in expected]
    for (_, message), (_, part) in zip(found, expected, strict=True):
        assert part in message


def test_the_create_check_walks_url_and_header_values() -> None:
    found = spec_strings(
        "https://t.example/{{ steps.x.output }}", {"X-A": "{{ item }}"}, None, "steps[0]"
    )
    problems = check_strings(found, names={}, n_steps=1, in_map=False)
    assert [f for f, _ in problems] == ["steps[0].url", "steps[0].headers.X-A"]


# -- resolution -------------------------------------------------------------------------------------

CTX = Context(
    "orc_0123",
    input={"id": 7, "price": 9.5, "name": "Ada", "items": [{"sku": "a"}, {"sku": "b"}], "n": None},
    steps=[StepResult({"charge_id": "ch_1", "ok": True}, 201), None, StepResult("text", 200)],
    names={"charge": 0, "ship": 1, "note": 2},
)

RESOLVE_ROWS = [
    ("{{ input.id }}", 7),  # a number stays a number
    ("{{ input.price }}", 9.5),
    ("{{ input.n }}", None),
    ("{{ input.items }}", [{"sku": "a"}, {"sku": "b"}]),
    ("{{ input.items[1].sku }}", "b"),
    ("{{ steps.charge.output.charge_id }}", "ch_1"),
    ("{{ steps.0.output.ok }}", True),
    ("{{ steps.charge.status_code }}", 201),
    ("{{ steps.note.output }}", "text"),
    ("{{ orchestration_id }}", "orc_0123"),
    ("id={{ input.id }}", "id=7"),  # inside a longer string: as text
    ("{{ input.name }}!", "Ada!"),  # a string as it is, without quotes
    ("x{{ input.items[0] }}", 'x{"sku":"a"}'),  # anything else as JSON text
    ("{{ input.n }}/{{ steps.0.output.ok }}", "null/true"),
    ("{{input.id}}{{ input.id }}", "77"),
]


@pytest.mark.parametrize(("text", "value"), RESOLVE_ROWS)
def test_a_reference_resolves_to_its_value(text: str, value: Any) -> None:
    out = Plan("https://t.example", {}, {"deep": [{"v": text}]}).resolve(CTX).payload
    assert out == {"deep": [{"v": value}]}
    assert type(out["deep"][0]["v"]) is type(value)


def test_item_and_index_resolve_in_a_maps_call() -> None:
    plan = Plan("https://t.example/{{ index }}", {}, {"sku": "{{ item.sku }}", "i": "{{ index }}"})
    calls = [plan.resolve(CTX.at(i, it)) for i, it in enumerate(CTX.input["items"])]
    assert [c.payload for c in calls] == [{"sku": "a", "i": 0}, {"sku": "b", "i": 1}]
    assert [c.url for c in calls] == ["https://t.example/0", "https://t.example/1"]


MISSING_ROWS = [
    ("{{ input.nope }}", "input.nope", "without that key"),
    ("{{ input.items[5] }}", "input.items[5]", "a list of 2"),
    ("{{ input.id.x }}", "input.id.x", "a number"),
    ("{{ input.items.sku }}", "input.items.sku", "a list"),
    ("{{ steps.ship.output }}", "steps.ship.output", "has not finished"),
    ("{{ steps.9.output }}", "steps.9.output", "has not finished"),
    ("{{ item }}", "item", "not one of a map's"),
    ("{{ index }}", "index", "not one of a map's"),
    ("a {{ input.nope }} b", "input.nope", "without that key"),
]


@pytest.mark.parametrize(("text", "path", "why"), MISSING_ROWS)
def test_a_missing_path_is_one_reference_missing_error(text: str, path: str, why: str) -> None:
    plan = Plan("https://t.example", {}, {"ok": "{{ input.id }}", "bad": {"x": text}})
    with pytest.raises(ReferenceMissing, match=why) as info:
        plan.resolve(CTX)
    assert info.value.code == "reference_missing"
    assert info.value.path == path
    assert info.value.field == "payload.bad.x"
    assert info.value.detail()["code"] == "reference_missing"


def test_status_code_without_an_http_answer_is_missing() -> None:
    ctx = Context("o", steps=[StepResult(output=None, status_code=None)], names={"w": 0})
    with pytest.raises(ReferenceMissing, match="got no HTTP answer"):
        Plan("https://t.example", {}, "{{ steps.w.status_code }}").resolve(ctx)


def test_a_path_into_a_truncated_output_is_missing_and_says_so() -> None:
    ctx = Context("o", steps=[StepResult('{"a": 1, ...', 200, truncated=True)], names={"big": 0})
    plan = Plan("https://t.example", {}, "{{ steps.big.output.a }}")
    with pytest.raises(ReferenceMissing, match="over 64 KiB"):
        plan.resolve(ctx)
    whole = Plan("https://t.example", {}, "{{ steps.big.output }}").resolve(ctx)
    assert whole.payload == '{"a": 1, ...'


def test_url_and_header_values_resolve_to_text() -> None:
    plan = Plan(
        "https://t.example/orders/{{ input.id }}?p={{ input.price }}",
        {"X-Order": "{{ input.id }}", "X-Items": "{{ input.items[0] }}", "X-Const": "c"},
        None,
    )
    call = plan.resolve(CTX)
    assert call.url == "https://t.example/orders/7?p=9.5"
    assert call.headers == {"X-Order": "7", "X-Items": '{"sku":"a"}', "X-Const": "c"}


@pytest.mark.parametrize(
    ("url", "input_"),
    [
        ("{{ input.u }}", {"u": "ftp://x.example/"}),
        ("{{ input.u }}/x", {"u": "not a url"}),
        ("https://{{ input.h }}/", {"h": ""}),
        ("https://t.example/{{ input.c }}", {"c": "a\nb"}),
        ("https://t.example/{{ input.c }}", {"c": "a" * 9000}),
    ],
)
def test_a_bad_resolved_url_is_its_own_error(url: str, input_: Any) -> None:
    with pytest.raises(ResolvedUrlInvalid) as info:
        Plan(url, {}, None).resolve(Context("o", input=input_))
    assert info.value.code == "reference_invalid_url"
    assert info.value.field == "url"


def test_a_resolved_url_that_is_good_passes() -> None:
    call = Plan("{{ input.u }}/x", {}, None).resolve(Context("o", input={"u": "https://a.example"}))
    assert call.url == "https://a.example/x"


def test_a_header_value_cannot_gain_a_line_break_from_a_reference() -> None:
    plan = Plan("https://t.example", {"X-A": "{{ input.v }}"}, None)
    with pytest.raises(ResolvedHeaderInvalid, match="line breaks") as info:
        plan.resolve(Context("o", input={"v": "a\r\nInjected: 1"}))
    assert info.value.field == "headers.X-A"


def test_no_partial_result_the_first_missing_reference_raises() -> None:
    plan = Plan("https://t.example/{{ input.id }}", {}, ["{{ input.id }}", "{{ input.gone }}"])
    with pytest.raises(ReferenceMissing):
        plan.resolve(CTX)


def test_a_plan_without_references_hands_back_its_spec() -> None:
    payload = {"a": [1, {"b": "c"}]}
    plan = Plan("https://t.example", {"X": "y"}, payload)
    assert not plan.has_refs
    call = plan.resolve(CTX)
    assert call.payload is payload and call.headers == {"X": "y"}


def test_constant_parts_are_shared_and_resolved_parts_are_fresh() -> None:
    const = {"big": list(range(5))}
    plan = Plan("https://t.example", {}, {"c": const, "v": "{{ input.id }}"})
    one, two = plan.resolve(CTX).payload, plan.resolve(CTX).payload
    assert one == two == {"c": const, "v": 7}
    assert one is not two and one["c"] is const


# -- properties -------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_TEMPLATE_BITS = st.sampled_from(
    [
        "{{ input }}",
        "{{ input.a }}",
        "{{ item }}",
        "{{ steps.0.output }}",
        "{{ x }}",
        "{{",
        "}}",
        "{{ input[",
        "{{ steps.a }}",
        "text",
        " ",
        "{{ index }}",
    ]
)
STRINGS = st.lists(_TEMPLATE_BITS | st.text(max_size=6), max_size=5).map("".join)
PAYLOADS = st.recursive(
    STRINGS | JSON,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(PAYLOADS, JSON, st.booleans())
def test_any_payload_resolves_or_raises_only_the_named_errors(
    payload: Any, input_: Any, mapped: bool
) -> None:
    try:
        plan = Plan("https://t.example", {}, payload)
    except ReferenceSyntaxError:
        return
    ctx = Context("o", input=input_, steps=[StepResult(input_, 200)], names={"a": 0})
    try:
        out = plan.resolve(ctx.at(0, input_) if mapped else ctx)
    except ResolveError:
        return
    msgspec.json.encode(out.payload)  # what is resolved can be sent


@given(JSON)
def test_a_whole_reference_gives_back_the_value_itself(value: Any) -> None:
    ctx = Context("o", input={"v": value})
    assert Plan("https://t.example", {}, "{{ input.v }}").resolve(ctx).payload == value
    inserted = Plan("https://t.example", {}, "<{{ input.v }}>").resolve(ctx).payload
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    assert inserted == f"<{text}>"


def test_a_payload_nested_as_deep_as_json_allows_resolves_without_recursion() -> None:
    depth = 900  # the parser refuses a little beyond 1,000
    payload = parse_json("[" * depth + '"{{ input }}"' + "]" * depth)
    found = check_strings(spec_strings(URL, {}, payload, ""), names={}, n_steps=1, in_map=False)
    assert found == []
    out = Plan(URL, {}, payload).resolve(Context("o", input={"v": 1})).payload
    for _ in range(depth):
        out = out[0]
    assert out == {"v": 1}


def test_a_plan_names_the_steps_its_call_needs() -> None:
    plan = Plan(
        "https://t.example/{{ steps.0.output.id }}",
        {"X-A": "{{ steps.charge.status_code }}", "X-B": "b"},
        {"a": "{{ input.x }}", "b": ["{{ steps.ship.output }}", "{{ item }}"]},
    )
    assert plan.steps_needed() == {0, "charge", "ship"}
    assert [r.root for r in plan.refs()] == ["steps", "steps", "input", "steps", "item"]
    assert Plan(URL, {}, "{{ steps.a.output }}").steps_needed() == {"a"}
    assert Plan(URL, {}, {"k": 1}).steps_needed() == set()
