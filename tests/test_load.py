"""Many users at once, small: ``python app.py`` in its own process, several gradio_client
sessions at the same time, every answer equal to the same request alone, and a burst beyond the
queue refused as busy (not dropped, not crashing the server). The full-size run (16 sessions x 5
requests, memory) is ``python bench/bench_load.py``; this file uses its harness.
"""

from __future__ import annotations

import gc

import pytest

from bench import bench_load as load

QUEUE_SIZE = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (load.ROOT / "assets" / "demo_segmenter.safetensors").is_file():
        pytest.skip("the shipped demo weights are needed by python app.py")
    log = tmp_path_factory.mktemp("load") / "server.log"
    proc, url = load.start_server(queue_size=QUEUE_SIZE, workers=2, log=log)
    try:
        yield proc, url
    finally:
        load.stop_server(proc)


def test_concurrent_sessions_get_their_own_results(server):
    proc, url = server
    requests = load.make_requests(8, load.examples())
    alone = load.run_alone(url, requests)
    assert [o.error for o in alone if not o.ok] == []
    reference = {o.request: o.result for o in alone}
    assert len({o.result["digest"]["seg_after"] for o in alone}) > 1  # the requests really differ
    together = load.run_together(url, [requests[i::4] for i in range(4)])
    assert [o.error for o in together if not o.ok] == []
    assert sorted(o.request.label() for o in together) == sorted(r.label() for r in requests)
    assert load.mismatches(together, reference) == []
    assert proc.poll() is None


def test_a_burst_beyond_the_queue_is_refused_as_busy(server):
    proc, url = server
    requests = load.make_requests(4, load.examples())
    reference = {o.request: o.result for o in load.run_alone(url, requests)}
    outcomes = load.burst(url, [requests[i % 4] for i in range(4 * QUEUE_SIZE)])
    refused = [o for o in outcomes if not o.ok]
    assert refused, "a burst of 4 x the queue size should overflow it"
    assert all("queue is full" in o.error.lower() and "try again" in o.error.lower() for o in refused)
    assert load.mismatches(outcomes, reference) == []  # everyone answered got the right answer
    assert proc.poll() is None
    after = load.run_alone(url, requests[:1])  # and the server still serves
    assert after[0].ok and load.comparable(after[0].result) == load.comparable(reference[requests[0]])


def test_session_caches_stay_within_the_budget(tiny_demo, rgb_image):
    """The prefix caches of all sessions together stay under the budget: the oldest is dropped,
    its page still renders, and its next run recomputes the same answer."""
    from prune_viz import ui_logic as L

    info, bb = L.backbone_info("demo")
    plan = L.build_plan(bb, "random", "2", 0, {"rate": 0.5})
    first, second = L.Session(image=rgb_image), L.Session(image=rgb_image[::-1].copy())
    budget = L.CacheBudget(0)
    saved = L.CACHE_BUDGET
    L.CACHE_BUDGET = budget
    try:
        before = L.run_analysis(first, bb, info.key, plan)
        one = L.CacheBudget.size(first.baseline)
        assert one > 0 and budget.held_bytes() == one
        budget.max_bytes = int(1.5 * one)  # room for one session's cache, not two
        L.run_analysis(second, bb, info.key, plan)
        assert first.baseline is None and first.analysis.baseline.x_after == []
        assert second.baseline is not None and budget.held_bytes() == L.CacheBudget.size(second.baseline)
        views = L.full_views(first.analysis, first.image, 2, bb.num_blocks, bb.patch_size)  # still drawable
        assert views["token_map"] is not None
        again = L.run_analysis(first, bb, info.key, plan)  # recomputed, same answer
        assert again.report["digest"] == before.report["digest"] and second.baseline is None
        budget.max_bytes = 10 * one
        third = L.Session(image=rgb_image[:, ::-1].copy())
        L.run_analysis(third, bb, info.key, plan)
        assert budget.held_bytes() == 2 * one
        del third
        gc.collect()
        assert budget.held_bytes() == one  # a session Gradio let go of is forgotten here too
    finally:
        L.CACHE_BUDGET = saved
