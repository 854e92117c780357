"""Known-answer tests for the machine-calibrated cost model of longalign.simulate: the fit, the
multi-rank prediction of a run, and the replay of the schedule a run trained with."""

from __future__ import annotations

import numpy as np
import pytest

from longalign import simulate as S
from longalign import train
from longalign.train import TrainConfig

from test_train import outputs, small, tiny_data  # noqa: F401  (fixture and helpers shared with the trainer tests)


def fake_record(points, step_rest: float, world_size: int = 1, comm: float = 0.0) -> dict:
    """A run record whose steps hold the given (seconds, positions, attention) micro-steps on one rank."""
    log = [{"micro_compute_s": [[p[0] for p in step]], "micro_positions": [[p[1] for p in step]],
            "micro_attention": [[p[2] for p in step]], "compute_s": [sum(p[0] for p in step)],
            "wait_s": [0.0], "comm_s": [comm], "step_s": sum(p[0] for p in step) + step_rest} for step in points]
    return {"world_size": world_size, "log": log}


def test_fit_recovers_known_terms():
    a, b, c = 2e-3, 3e-6, 4e-10
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(8):
        pos = rng.integers(50, 2048, size=4)
        att = pos * rng.integers(50, 2048, size=4)
        steps.append([(a + b * p + c * q, int(p), int(q)) for p, q in zip(pos, att)])
    model = S.fit_cost_model([fake_record(steps, 0.05)], comm_records=[fake_record(steps[:3], 0.0, 2, comm=0.01)])
    assert (model.a, model.b, model.c) == pytest.approx((a, b, c), rel=1e-6)
    assert model.step_s == pytest.approx(0.05) and model.allreduce_s == pytest.approx(0.01)
    assert model.n_points == 7 * 4  # the first (warm-up) step is left out


def test_fit_needs_single_process_records():
    with pytest.raises(ValueError, match="single-process"):
        S.fit_cost_model([fake_record([[(1.0, 1, 1)]], 0.0, world_size=2)])


def test_predict_two_ranks_by_hand():
    # a=1, b=1, c=0: micro-step costs (1+p). Step 1 (warm-up, skipped). Step 2: micro 1 ranks 3 / 1 -> 3,
    # idle 2; micro 2 ranks 2 / 2 -> 2, idle 0; + step_s 0.5 + allreduce 0.25 -> 5.75 s; busy 3+1+2+2 = 8
    model = S.CostModel(a=1.0, b=1.0, c=0.0, step_s=0.5, allreduce_s=0.25)
    schedule = [[[(9, 0), (9, 0)]], [[(2, 7), (0, 7)], [(1, 3), (1, 3)]]]
    out = S.predict_run(schedule, model)
    assert out["seconds"] == pytest.approx(5.75)
    assert out["idle_fraction"] == pytest.approx(2 / (2 + 8))
    # one rank: no all-reduce, no idle
    assert S.predict_run([[[(0, 0)]], [[(2, 0)]]], model) == {"seconds": pytest.approx(3.5), "idle_fraction": 0.0}


def test_micro_features_packed_and_padded():
    assert S.micro_features([3, 5], packed=True) == (8, 9 + 25)
    assert S.micro_features([3, 5], packed=False) == (10, 2 * 25)


def yielded_steps(lengths, cfg: TrainConfig, world: int, steps: int):
    """Per step, micro-step, rank: the features of what each rank's real sampler yields, epoch after epoch."""
    packed = cfg.method in train.PACKED_METHODS
    per_rank = []
    for r in range(world):
        sampler, batches = train.batch_sampler(lengths, cfg, world, r), []
        for epoch in range(steps):  # enough epochs for ``steps`` steps of >= 1 micro-batch
            sampler.set_epoch(epoch)
            epoch_batches = list(sampler)
            batches += [epoch_batches[k:k + cfg.grad_accum] for k in range(0, len(epoch_batches), cfg.grad_accum)]
        per_rank.append(batches[:steps])
    ids = (lambda mb: [i for i, _ in mb]) if packed else (lambda mb: list(mb))
    return [[[S.micro_features([lengths[i] for i in ids(per_rank[r][s][m])], packed) for r in range(world)]
             for m in range(len(per_rank[0][s]))] for s in range(steps)]


@pytest.mark.parametrize("method,batch", [("naive", 2), ("sorted", 2), ("packing", 1), ("packing_weighted", 1)])
def test_replay_is_the_samplers_schedule(method, batch):
    lengths = S.longalign_length_mix(6, 54, seed=3, long_range=(300, 1000), short_median=60).tolist()
    cfg = TrainConfig(method=method, max_len=1024, per_device_batch=batch, grad_accum=3, seed=7)
    steps = 12  # past the end of the first epoch for every method
    replay = S.replay_schedule(vars(cfg) | {"adam_betas": list(cfg.adam_betas)}, lengths, 2, steps)
    assert replay == yielded_steps(lengths, cfg, 2, steps)
    # and it is the epoch plan the simulator costs (first epoch; steps of the packed plan are whole steps)
    if method == "sorted":
        plan = train.batch_sampler(lengths, cfg, 2, 0).epoch_plan(0)
        first = [[S.micro_features([lengths[u[0]] for u in ranks[r]], False) for r in range(2)] for ranks in plan[0]]
        assert replay[0] == first


def test_logged_schedule_of_a_real_run_equals_the_replay(outputs):  # noqa: F811
    data = tiny_data(14)
    for method, batch in (("naive", 3), ("packing_weighted", 1)):
        rec = train.run_training(small(method, f"cm-{method}", per_device_batch=batch, grad_accum=2), dataset=data)
        lengths = [len(x) for x in data["input_ids"]]
        assert S.logged_schedule(rec) == S.replay_schedule(rec["config"], lengths, 1, rec["steps"])
        assert all(len(r["micro_compute_s"][0]) == 2 and min(r["micro_compute_s"][0]) > 0 for r in rec["log"])
        pred = S.predict_run(rec, S.CostModel(1.0, 0.0, 0.0), lengths=lengths)
        assert pred == {"seconds": 2.0, "idle_fraction": 0.0}  # step 2 of 2: two micro-steps of cost a = 1


def test_speed_tables_by_hand():
    from longalign import reports
    speed = {"world_size": 2, "seed": 0, "methods": {
        "naive": {"measured_s": 10.0, "measured_idle": 0.2, "simulated_s": 12.0, "simulated_idle": 0.1},
        "sorted": {"measured_s": 5.0, "measured_idle": 0.1, "simulated_s": 5.0, "simulated_idle": 0.1},
        "packing": {"measured_s": 4.0, "measured_idle": 0.1, "simulated_s": 4.0, "simulated_idle": 0.1}}}
    table = reports.speed_table(speed)
    assert table.loc["naive", "seconds_error"] == pytest.approx(0.2)
    check = reports.speed_check(speed)
    assert check["measured"].tolist() == pytest.approx([0.2, 2.5, 2.0])
    assert check["simulated"].tolist() == pytest.approx([0.1, 3.0, 2.4])
    assert check["within_tolerance"].tolist() == [False, True, True]  # idle -50 %, ratios +20 %
    fig5 = reports.fig5_checked_table({"naive": 1.0, "sorted": 0.5, "packing": 0.4}, "sim", check)
    assert fig5.loc["sim", "w2_check"].startswith("OUTSIDE") and fig5.loc["sim", "naive/packing"] == pytest.approx(2.5)
    del speed["methods"]["sorted"]  # a method not run cannot pass
    assert reports.speed_check(speed)["within_tolerance"].tolist() == [False, True, False]


def test_contended_ranks_share_the_machine_by_hand():
    # one core's worth for two ranks needing 1 s and 3 s alone: both at half speed until t = 2 (rank 0 done),
    # then rank 1's last 2 s alone -> finishes at 4; idle 2 of 2 x 4 rank-seconds
    model = S.CostModel(a=0.0, b=1.0, c=0.0, cores=1.0)
    assert model.contended([1.0, 3.0]).tolist() == [2.0, 4.0]
    assert model.contended([3.0, 1.0]).tolist() == [4.0, 2.0]
    assert S.predict_run([[], [[(1, 0), (3, 0)]]], model) == {"seconds": 4.0, "idle_fraction": 0.25}
    # enough cores: each rank runs alone-speed
    assert S.CostModel(0.0, 1.0, 0.0, cores=2.0).contended([1.0, 3.0]).tolist() == [1.0, 3.0]


def test_parallel_capacity_is_a_share_of_the_ranks():
    cap = S.parallel_capacity(2, seconds=0.2)  # probes run and report: a count of full-speed processes
    assert 0.0 < cap <= 2.0
