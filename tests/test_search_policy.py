"""search.policy: the rules both backends share (the backends are tested against it with real
libraries in test_search_optuna.py and test_ray_backend.py; these are the rules themselves)."""
from __future__ import annotations

import pytest

import spaces
from evaluators import ACCURACY, BITS_PER_CHAR, TrialResult
from search import policy
from search.baselines import DEFAULT, check, resolve
from search.exceptions import UsageError
from search.records import TrialRecord


def _rec(number, status="ok", duplicate_of=None, fingerprint="f", score=0.5):
    return TrialRecord(number=number, status=status, label=f"trial_{number}", fingerprint=fingerprint,
                       score=score if status == "ok" else None, duplicate_of=duplicate_of)


def test_duplicates_errors_and_unfinished_trials_do_not_count():
    records = [_rec(0), _rec(1, "pruned"), _rec(2, "rejected"), _rec(3, "diverged"), _rec(4, duplicate_of=0),
               _rec(5, "error"), _rec(6, "interrupted"), _rec(7, "running")]
    assert [policy.counts(r) for r in records] == [True] * 4 + [False] * 4
    assert policy.evaluated(records) == 4


def test_the_user_is_told_why_more_trials_were_printed_and_when_nothing_is_searched():
    records = [_rec(0), _rec(1), _rec(2, duplicate_of=0), _rec(3, duplicate_of=1)]
    note = policy.search_note(records, trials=2)
    assert "4 trials" in note and "2 evaluated (--trials 2)" in note and "2 duplicate" in note
    assert "not trained" in note and "does not count" in note
    assert policy.search_note(records[:2], trials=2) is None
    assert "nothing will be searched" in policy.baselines_warning(4, 4)
    assert "nothing will be searched" in policy.baselines_warning(3, 4)
    assert policy.baselines_warning(5, 4) is None
    # a rerun with nothing to do, and a search that ended short, count what --trials counts
    assert policy.already_done_note("s", records, 2) == \
        "study 's' already holds 2 evaluated trials (--trials 2): no new trials"
    assert policy.stopped_note("--timeout 5 s reached", records, 3) == \
        "search stopped early: --timeout 5 s reached; 2 of 3 trials evaluated"


def test_the_registry_gives_a_fingerprint_to_its_first_finished_owner():
    reg = policy.Registry()
    assert reg.owner("a") is None
    reg.claim("a", 3)
    assert reg.owner("a") == (3, None)  # running: a duplicate must wait (Ray holds it back)
    reg.claim("a", 4)                   # a later claim does not steal it
    reg.finish("a", 3, policy.Outcome("ok", 0.7))
    number, outcome = reg.owner("a")
    assert number == 3 and outcome.score == 0.7
    dup = outcome.reused_by_duplicate(3)
    assert (dup.status, dup.score) == ("ok", 0.7) and "duplicate of trial 3" in dup.reason and dup.device is None
    reg.claim("b", 5)
    reg.finish("b", 5, None)            # the owner failed with an error: the fingerprint is free again
    assert reg.owner("b") is None
    rebuilt = policy.Registry.from_records([_rec(0, fingerprint="x", score=0.6), _rec(1, fingerprint="x", score=0.9),
                                            _rec(2, "error", fingerprint="y")])
    assert rebuilt.owner("x")[0] == 0 and rebuilt.owner("y") is None


def test_nan_is_an_outcome_never_a_score():
    o = policy.Outcome("ok", float("nan"))
    assert o.status == "diverged" and o.score is None
    r = TrialResult("ok", 0.8, coefficients={"eps": [0.1, 0.3]}, device="cpu")
    o = policy.Outcome.from_result(r)
    assert o.learned_coefficients == {"eps": pytest.approx(0.2)} and o.learned_per_layer == {"eps": [0.1, 0.3]}
    assert policy.Outcome.from_dict(o.to_dict()) == o


def test_stop_rules_count_in_a_row():
    rules = policy.StopRules()
    for _ in range(policy.MAX_CONSECUTIVE_ERRORS - 1):
        rules.observe("error", False, "boom")
    rules.observe("ok", False)
    assert rules.stop_reason is None  # an ok trial resets the count
    for _ in range(policy.MAX_CONSECUTIVE_ERRORS):
        rules.observe("error", False, "boom")
    assert rules.too_many_errors and "boom" in rules.error_message()
    dups = policy.StopRules()
    for _ in range(policy.MAX_DUPLICATES_IN_A_ROW):
        dups.observe("ok", True)
    assert "exhausted" in dups.stop_reason and not dups.too_many_errors


def test_pruning_follows_the_metric_and_never_stops_baselines_or_a_finished_training():
    class LM:
        metric = BITS_PER_CHAR

    plan = policy.pruning("median", LM(), epochs=3, n_baselines=5)
    assert (plan.metric, plan.direction, plan.n_startup, plan.epochs) == ("val_bpc", "minimize", 5, 3)
    assert policy.may_prune(None, 1, 3) and not policy.may_prune(None, 3, 3) and not policy.may_prune("gelu", 1, 3)
    with pytest.raises(ValueError, match="pruner"):
        policy.pruning("asha", LM(), 3, 4)


def test_the_best_so_far_is_in_the_metric_direction():
    best = policy.Best(BITS_PER_CHAR)
    for v, f in ((1.6, "a"), (1.4, "b"), (1.5, "c"), (float("nan"), "d")):
        best.offer(v, f)
    assert (best.value, best.formula) == (1.4, "b")
    best = policy.Best(ACCURACY)
    for v, f in ((0.6, "a"), (0.8, "b"), (0.7, "c")):
        best.offer(v, f)
    assert best.formula == "b"
    assert policy.progress_line(7, "ok", 0.5, "tanh(x)", duplicate_of=3) == \
        "trial    7  ok         0.5000  tanh(x) (= trial 3, free)"


def test_a_params_combination_the_space_cannot_build_is_a_rejected_candidate():
    space = spaces.get_space("eafo_default")
    built = policy.build(space, {}, params={"base": "nope", "correction": "none"})
    assert built.candidate is None and "cannot be built" in built.reason
    built = policy.build(space, dict(spaces.BASELINES), baseline="crrelu")
    assert built.fingerprint == spaces.BASELINES["crrelu"].fingerprint


@pytest.mark.parametrize("name", spaces.list_activations())
def test_every_activation_the_registry_offers_is_a_valid_baseline(name):
    """No list of baselines is kept here: whatever spaces offers (prelu, squared_relu... when
    they are added) is accepted, and resolves to the registry's own candidate."""
    names = ["gelu"] + ([name] if name != "gelu" else [])
    assert resolve(names)[name].fingerprint == spaces.get_activation(name).candidate.fingerprint


def test_the_default_baselines_are_the_papers_and_bad_lists_are_one_line_errors():
    assert {k: c.fingerprint for k, c in resolve(DEFAULT).items()} == \
        {k: c.fingerprint for k, c in spaces.BASELINES.items()}
    with pytest.raises(UsageError, match="valid names: " + ", ".join(spaces.list_activations())):
        check(["gelu", "swish2"])
    with pytest.raises(UsageError, match="must include gelu"):
        check(["relu"])


# ---------------------------------------------------------------------------
# The prefilter (--prefilter M)
# ---------------------------------------------------------------------------

SMOOTH_RELUS = ("gelu(x)", "silu(x)", "softplus(x) - log(2)", "elu(x)", "mish(x)")
SATURATING = ("tanh(x)", "sigmoid(x)", "x/(1 + abs(x))")


def _trained(prefilter, metric):
    """Smooth ReLU-like activations trained well, saturating ones poorly (accuracy or bpc)."""
    for i, f in enumerate(SMOOTH_RELUS[:3] + SATURATING[:2]):
        acc = 0.85 if f in SMOOTH_RELUS else 0.70
        score = acc if metric is ACCURACY else 3.0 - acc  # bits per character: lower is better
        prefilter.observe(i, spaces.parse(f), "ok", score)


@pytest.mark.parametrize("metric", [ACCURACY, BITS_PER_CHAR], ids=["accuracy", "bpc"])
def test_the_prefilter_trains_the_proposal_that_looks_like_what_trained_well(metric):
    """After five trained candidates, of [saturating, saturating, smooth ReLU-like] proposals
    the prefilter trains the ReLU-like one (not the sampler's first), in either direction."""
    pf = policy.Prefilter(4, 1.0, metric.direction)
    _trained(pf, metric)
    proposals = [policy.Built(c, c.fingerprint) for c in
                 (spaces.parse("2*tanh(x)"), spaces.parse("x/(2 + abs(x))"), spaces.parse("elu(x)"))]
    assert pf.choose(proposals) == 2


def test_the_prefilter_never_picks_a_rejected_or_evaluated_proposal_while_another_is_left():
    pf = policy.Prefilter(3, 1.0, "maximize")
    _trained(pf, ACCURACY)
    gelu = spaces.parse("gelu(x)")  # trained well, but evaluated already
    rejected = policy.Built(None, None, "cannot be built")
    tanh = spaces.parse("2*tanh(x)")
    proposals = [rejected, policy.Built(gelu, gelu.fingerprint), policy.Built(tanh, tanh.fingerprint)]
    assert pf.choose(proposals, evaluated={gelu.fingerprint}) == 2
    assert pf.choose(proposals[:2], evaluated={gelu.fingerprint}) == 1  # only a duplicate left: it (free)
    assert pf.choose([rejected, rejected]) == 0


def test_the_prefilter_learns_once_per_trial_and_not_from_duplicates_rejections_or_errors():
    pf = policy.Prefilter(2, 1.0, "maximize")
    assert pf.on and not policy.Prefilter(1, 1.0, "maximize").on
    c = spaces.parse("gelu(x)")
    pf.observe(0, c, "ok", 0.8)
    pf.observe(0, c, "ok", 0.8)                  # the same trial again
    pf.observe(1, c, "ok", 0.8, duplicate=True)  # reuses trial 0's result
    pf.observe(2, c, "rejected", None)
    pf.observe(3, c, "error", None)
    pf.observe(4, spaces.parse("tanh(x)"), "diverged", None)  # learned as the worst seen
    assert sorted(pf.seen) == [0, 4] and len(pf.surrogate._seen) == 2
    with pytest.raises(ValueError, match="prefilter"):
        policy.Prefilter(0, 1.0, "maximize")
