"""References benchmark: the cost of resolving a map's task for each of its items (issue #21).

    .venv/bin/python bench/bench_refs.py                 # 10,000 items, best of 5 runs
    .venv/bin/python bench/bench_refs.py --items 1000 --runs 3

A map compiles its task spec into a plan once (taskorch.workflows.refs.Plan) and resolves it per
item, so the per-item cost is what the step machine adds to each call a map makes. The spec is a
typical one: a url with the item's id in its path, two headers (one a reference), and a payload
of a dozen fields, four of them references (the item, a field of it, the index, a field of the
orchestration's input and one of an earlier step's output) beside constant parts. Printed: the
compile's cost, and the per-item cost of a resolve (and of a resolve plus the JSON encoding the
call sends), best of the runs. Pure CPU: no Redis, no network.
"""

from __future__ import annotations

import argparse
import time

import msgspec

from taskorch.workflows.refs import Context, Plan, StepResult

URL = "https://api.example.com/customers/{{ item.customer }}/notify"
HEADERS = {"X-Order": "{{ input.order_id }}", "X-Source": "taskorch"}
PAYLOAD = {
    "order": "{{ input.order_id }}",
    "line": "{{ index }}",
    "item": "{{ item }}",
    "sku": "{{ item.sku }}",
    "charge": "{{ steps.charge.output.id }}",
    "message": "Your item {{ item.sku }} of order {{ input.order_id }} has shipped.",
    "channel": "email",
    "template": {"id": "shipped-v2", "locale": "en", "vars": ["name", "sku", "eta"]},
    "tags": ["order", "shipping"],
    "priority": 3,
    "tracking": None,
    "meta": {"source": "workflow", "version": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    items = [
        {"customer": f"cus_{i}", "sku": f"sku-{i % 97}", "qty": i % 5} for i in range(args.items)
    ]
    ctx = Context(
        "orc_0123456789abcdef01234567",
        input={"order_id": "ord_42", "items": items},
        steps=[StepResult({"id": "ch_1", "amount": 1200}, 201)],
        names={"charge": 0},
    )
    t0 = time.perf_counter()
    plan = Plan(URL, HEADERS, PAYLOAD)
    compile_us = (time.perf_counter() - t0) * 1e6
    enc = msgspec.json.Encoder()
    resolve_s, encode_s = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        calls = [plan.resolve(ctx.at(i, item)) for i, item in enumerate(items)]
        resolve_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for call in calls:
            enc.encode(call.payload)
        encode_s.append(time.perf_counter() - t0)
    assert calls[-1].url == f"https://api.example.com/customers/cus_{args.items - 1}/notify"
    best, best_enc = min(resolve_s), min(encode_s)
    n = args.items
    print(f"compile once: {compile_us:.0f} us")
    print(
        f"resolve {n} items: {best * 1e3:.1f} ms, {best / n * 1e6:.2f} us per item (best of {args.runs})"
    )
    print(f"  + JSON encoding of each payload: {(best + best_enc) / n * 1e6:.2f} us per item")


if __name__ == "__main__":
    main()
