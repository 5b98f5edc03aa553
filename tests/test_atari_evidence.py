"""scripts/atari_evidence.py: game names and bad input, the run configs of stages (a) and (c), the
clip scores of (b) on constructed cases, its clip cache, and that (a) is reused when finished and
resumed when not (a real Pong baseline of one rollout, run in this process)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.errors import UserError
from rlhf_control.experiments import backends, baseline
from rlhf_control.experiments.sweep import expand_grid, load_spec, plan_sweep
from rlhf_control.types import Segment, StackedFrames

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "atari_evidence.py"
_spec = importlib.util.spec_from_file_location("atari_evidence", SCRIPT)
ae = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ae
_spec.loader.exec_module(ae)
brq = ae.brq
PONG = "ALE/Pong-v5"


def clip(ret_steps, uid=0, frames=None):
    """A 5-step clip of 2 x 2 frames whose true rewards are ``ret_steps``."""
    frames = np.zeros((8, 2, 2), np.uint8) if frames is None else frames
    return Segment(StackedFrames(frames, 4), np.zeros(5, np.int64), true_rewards=np.asarray(ret_steps, float), uid=uid)


class Predicts:
    """Ensemble stand-in whose members predict ``f(true return)``."""

    def __init__(self, f):
        self.f = f

    def member_segment_returns(self, segments, normalized=False):
        return np.tile([self.f(s.true_return) for s in segments], (3, 1))


# ----------------------------------------------------------------------------- names and bad input
def test_game_names_and_unknown_game():
    assert ae.game_task("Pong") == PONG and ae.game_task("pong") == PONG
    assert ae.game_task("ALE/Breakout-v5") == "ALE/Breakout-v5"
    with pytest.raises(UserError, match="unknown game 'Tetris'; allowed: BeamRider, Breakout, .*Pong"):
        ae.game_task("Tetris")


@pytest.mark.parametrize("argv, message", [
    (["--game", "Tetris"], "unknown game 'Tetris'; allowed: BeamRider"),
    (["--frames", "0"], "'0' must be a positive integer"),
    (["--rlhf-frames", "-4"], "'-4' must be a positive integer"),
    (["--labels", "300", "0"], "'0' must be a positive integer"),
    (["--rlhf-labels", "1.5"], "'1.5' must be a positive integer"),
    (["--clips", "many"], "'many' must be a positive integer"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ae.main([*argv, "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err


def test_less_than_one_agent_step_and_too_many_pretraining_labels(tmp_path, capsys):
    assert ae.main(["--frames", "3", "--dry-run", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "atari_evidence.py: error: --frames 3 is less than one agent step (4 frames)"
    assert ae.main(["--rlhf-labels", "50", "--rlhf-pretrain", "60", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "--rlhf-pretrain 60 must be between 0 and --rlhf-labels 50" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written by a refused or dry run


def test_smoke_is_tiny_and_kept_apart_from_real_runs():
    real, smoke = ae.parse([]), ae.parse(["--smoke"])
    assert real.out == Path("runs/atari-evidence/Pong") and smoke.out == Path("runs/atari-evidence-smoke/Pong")
    assert (real.frames, real.labels, real.rlhf_frames) == (4_000_000, [300, 1000, 3000], 1_000_000)
    assert smoke.frames < 1000 and max(smoke.labels) < 20 and smoke.rlhf_frames < 10_000
    assert ae.parse(["--smoke", "--frames", "800"]).frames == 800  # a flag wins over the smoke scale


def test_frames_are_agent_steps_times_four():
    assert ae.agent_steps(4_000_000, PONG, "--frames") == 1_000_000
    with pytest.raises(UserError, match="--frames 0 must be a positive number of frames"):
        ae.agent_steps(0, PONG, "--frames")


# ----------------------------------------------------------------------------- (a) and (c) configs
def test_curve_runs_share_task_steps_seed_and_evaluation_steps(tmp_path):
    specs = ae.curve_specs(PONG, 1_000_000, 3, labels=500, pretrain=100, pretrain_epochs=20, reward_epochs=1,
                           evals=10, eval_episodes=2)
    (a2c,), (rlhf,) = expand_grid(specs["a2c"]), expand_grid(specs["rlhf"])
    assert (a2c.kind, rlhf.kind) == ("baseline", "rlhf")
    for p in (a2c, rlhf):
        assert (p.cfg.task, p.cfg.steps, p.cfg.seed, p.cfg.eval_episodes) == (PONG, 250_000, 3, 2)
    c = rlhf.cfg
    assert (c.labels, c.pretrain_labels, c.pretrain_epochs, c.reward_epochs, c.oracle) == (500, 100, 20, 1, "perfect")
    assert a2c.cfg.algo is None and a2c.cfg.agent == {}  # the catalogue's A2C and hyperparameters for both
    # Evaluations about every 25,000 steps in both, counted in RLHF iterations of 2,048 steps (the
    # baseline evaluates at those steps though its A2C rollouts are 80 steps).
    assert a2c.cfg.eval_every == rlhf.cfg.eval_every
    assert rlhf.cfg.eval_every * 2048 == pytest.approx(25_000, rel=0.1)
    assert a2c.name != rlhf.name  # both in one output directory, for one report
    # The spec files the printed commands run are the same grids.
    for kind, spec in specs.items():
        assert load_spec(ae.write_spec(spec, tmp_path / f"{kind}.toml")) == spec


def test_curve_rlhf_run_can_skip_waiting_for_the_reward(tmp_path):
    kw = dict(labels=500, pretrain=100, pretrain_epochs=20, reward_epochs=1, evals=10)
    waiting = ae.curve_specs(PONG, 1_000_000, 0, **kw)
    free = ae.curve_specs(PONG, 1_000_000, 0, **kw, reward_wait=False)
    assert expand_grid(waiting["rlhf"])[0].cfg.reward_wait is True
    (rlhf,) = expand_grid(free["rlhf"])
    assert rlhf.cfg.reward_wait is False
    assert expand_grid(free["a2c"])[0].cfg == expand_grid(waiting["a2c"])[0].cfg  # A2C has no reward to wait for
    assert load_spec(ae.write_spec(free["rlhf"], tmp_path / "rlhf.toml")) == free["rlhf"]


def test_policy_spec_is_one_baseline_run():
    (p,) = expand_grid(ae.policy_spec(PONG, 4_000_000, 0, evals=10))
    assert p.kind == "baseline" and p.cfg.steps == 1_000_000 and p.cfg.seed == 0
    assert p.cfg.eval_every * 2048 == pytest.approx(100_000, rel=0.05)


# ----------------------------------------------------------------------------- (b)
def test_clip_scores_on_known_cases():
    rng = np.random.default_rng(0)
    held = {"random": [clip(rng.integers(-1, 1, 5), i) for i in range(40)],
            "trained": [clip(rng.integers(-1, 2, 5), 100 + i) for i in range(40)]}
    perfect = brq.clip_scores(Predicts(lambda r: 3 * r + 1), held)
    assert perfect["spearman"] == pytest.approx({"all": 1, "random": 1, "trained": 1, "nonzero": 1})
    assert perfect["pair_accuracy"] == 1.0
    assert perfect["nonzero"] == {p: sum(s.true_return != 0 for s in v) for p, v in held.items()}
    assert perfect["heldout"] == {"random": 40, "trained": 40}
    wrong = brq.clip_scores(Predicts(lambda r: -r), held)
    assert wrong["spearman"]["all"] == pytest.approx(-1) and wrong["pair_accuracy"] == 0.0
    # Right on the sign only (a point or not), blind to how many: pairs 0 vs -1 right, -1 vs -2 tied (wrong).
    half = {"g": [clip([0] * 5, 0), clip([-1, 0, 0, 0, 0], 1), clip([-1, -1, 0, 0, 0], 2)]}
    s = brq.clip_scores(Predicts(lambda r: float(r < 0) * -1), half)
    assert s["pair_accuracy"] == pytest.approx(2 / 3) and s["nonzero"] == {"g": 2}
    assert np.isnan(s["spearman"]["nonzero"])  # constant prediction on the non-zero clips
    assert s["pair_accuracy_by"] == pytest.approx({"one_zero": 1.0, "both_nonzero": 0.0})


def test_label_mix_counts_what_the_pairs_compared():
    from rlhf_control.types import Label, SegmentPair

    win, none, lose = clip([1, 0, 0, 0, 0], 0), clip([0] * 5, 1), clip([0, -1, 0, 0, 0], 2)
    labels = [Label(SegmentPair(win, none), 1), Label(SegmentPair(none, lose), 1),
              Label(SegmentPair(clip([0] * 5, 3), none), 0), Label(SegmentPair(lose, win), -1)]
    assert ae.label_mix(labels) == {"labels": 4, "ties": 1, "with_gain": 2, "with_loss": 2}
    assert ae.label_mix([]) == {"labels": 0, "ties": 0, "with_gain": 0, "with_loss": 0}


def test_tie_ceiling_is_what_a_right_predictor_without_ties_reaches():
    rng = np.random.default_rng(2)
    true = rng.choice([-1.0, 0.0, 0.0, 1.0], 300)  # sparse returns: many ties at 0
    ceiling = brq.tie_ceiling(true)
    for _ in range(5):  # right on every pair of different returns, ties broken at random
        pred = true + rng.uniform(0, 0.5, true.size)
        assert brq.spearmanr(pred, true).statistic == pytest.approx(ceiling)
    assert 0.7 < ceiling < 0.95  # ties cost something, and Spearman of the true returns themselves is 1
    assert brq.tie_ceiling(rng.normal(size=50)) == pytest.approx(1.0)  # no ties: no ceiling below 1
    assert np.isnan(brq.tie_ceiling(np.zeros(10)))
    held = {"g": [clip([v, 0, 0, 0, 0], i) for i, v in enumerate(true[:60])]}
    scores = brq.clip_scores(Predicts(lambda r: r), held)
    assert scores["spearman_ceiling"]["g"] == pytest.approx(brq.tie_ceiling(true[:60]))
    assert scores["spearman_ceiling"]["all"] == scores["spearman_ceiling"]["g"]


def test_stacked_clips_round_trip_and_are_cached(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    segs = [clip(rng.normal(size=5), i, rng.integers(0, 255, (8, 2, 2), dtype=np.uint8)) for i in range(6)]
    brq.save_clips(tmp_path / "c.npz", segs)
    back = brq.load_clips(tmp_path / "c.npz")
    assert all(isinstance(b.obs, StackedFrames) and np.array_equal(b.obs_array(), s.obs_array())
               and b.true_return == pytest.approx(s.true_return) for b, s in zip(back, segs, strict=True))

    calls = []

    def record(r, policy, folder, n, seed):
        calls.append(policy)
        assert policy == "random" or (folder / "trained.zip").read_bytes() == b"agent"
        return segs[:n]

    monkeypatch.setattr(brq, "record_clips", record)
    agent = tmp_path / "agent.zip"
    agent.write_bytes(b"agent")
    first = ae.quality_clips(None, agent, 4, 0, tmp_path / "cache")
    again = ae.quality_clips(None, agent, 4, 0, tmp_path / "cache")
    assert calls == ["random", "trained"] and len(again["trained"]) == len(first["random"]) == 4
    other = tmp_path / "other.zip"  # clips of another trained policy are not taken from this cache
    other.write_bytes(b"another agent")
    with pytest.raises(UserError, match="recorded with another trained policy than"):
        ae.quality_clips(None, other, 4, 0, tmp_path / "cache")
    assert calls == ["random", "trained"]


def test_a_given_policy_must_be_an_agent_zip(tmp_path, capsys):
    import zipfile

    with pytest.raises(UserError, match=r"--policy '.*nothing.zip' is not an agent file; allowed: an SB3 agent .zip"):
        ae.given_agent(tmp_path / "nothing.zip")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(UserError, match="is not an agent file"):
        ae.given_agent(tmp_path / "text.zip")
    with zipfile.ZipFile(tmp_path / "agent.zip", "w") as z:
        z.writestr("data", "{}")
    assert ae.given_agent(tmp_path / "agent.zip") == tmp_path / "agent.zip"
    # Through main: refused in one line before anything is recorded.
    rc = ae.main(["--stages", "quality", "--policy", str(tmp_path / "text.zip"), "--out", str(tmp_path / "o")])
    assert rc == 2 and capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "o" / "clips").exists()


def test_plan_pair_epochs():
    plan = brq.LabelPlan(labels=30, pretrain=10, pretrain_epochs=5, reward_epochs=2, rounds=2, label_window=25)
    assert plan.pair_epochs() == 10 * 5 + 20 * 2 + 25 * 2  # the window caps the last round


# ----------------------------------------------------------------------------- (a) reused and resumed
@pytest.mark.slow
def test_policy_stage_is_reused_when_done_and_resumed_when_not(tmp_path, monkeypatch):
    real = baseline.random_policy_returns
    monkeypatch.setattr(baseline, "random_policy_returns", lambda task, seed: real(task, seed, 1, 50))
    ran = []

    def in_process(payloads, workers, on_result):  # the sweep's process pool, in this process
        for p in payloads:
            ran.append(p["resume"])
            on_result(backends.execute_point(p))

    monkeypatch.setattr(backends, "run_local", in_process)
    spec = ae.policy_spec(PONG, 640, 0, evals=1, eval_episodes=0)  # 160 agent steps: two A2C rollouts
    out = tmp_path / "policy"
    with pytest.raises(UserError, match="stage policy .a. has not finished"):
        ae.trained_agent(spec, out)
    assert ae.run_spec(spec, out, dry_run=False) == 0
    agent = ae.trained_agent(spec, out)
    assert agent.is_file() and ran == [False]
    assert ae.run_spec(spec, out, dry_run=False) == 0 and ran == [False]  # finished: not run again
    run_dir = ae.policy_dir(spec, out)
    (run_dir / "DONE").unlink()  # as if stopped after its last checkpoint
    assert plan_sweep(spec, out)[0][1] == "resume"
    with pytest.raises(UserError, match="status resume"):
        ae.trained_agent(spec, out)
    assert ae.run_spec(spec, out, dry_run=False) == 0 and ran == [False, True]
    again = ae.trained_agent(spec, out)  # the same step's checkpoint, written again under a new name
    assert again.is_file() and again.parent.name.startswith(agent.parent.name + "-r")
