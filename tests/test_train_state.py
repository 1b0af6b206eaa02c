"""The trainer's state (one dataclass, what a checkpoint saves and restores), strategies as
typed configs with explicit hooks."""

from __future__ import annotations

import pytest
import torch
import tyro

from splatforge.config import (
    DefaultStrategyConfig,
    MCMCStrategyConfig,
    TrainConfig,
    parse_config,
)
from splatforge.errors import ConfigError
from splatforge.train import load_checkpoint, make_strategy
from splatforge.train.checkpoint import save_checkpoint
from splatforge.train.state import TrainState
from splatforge.train.strategies import TrainStrategy
from splatforge.train.trainer import Trainer

# --------------------------------------------------------------------------------------------
# Strategy settings: a typed choice, every threshold reachable
# --------------------------------------------------------------------------------------------


def test_strategy_given_as_a_typed_config_reaches_every_threshold():
    cfg = parse_config(TrainConfig, {"strategy": {
        "name": "mcmc", "cap_max": 5000, "noise_lr": 1e5, "min_opacity": 0.01,
        "refine_every": 50, "refine_start_iter": 7, "refine_stop_iter": 900}})
    assert cfg.strategy == "mcmc" and cfg.cap_max == 5000 and cfg.densification_interval == 50
    assert {"cap_max", "noise_lr", "densification_interval"} <= cfg.model_fields_set
    typed = cfg.strategy_config()
    assert isinstance(typed, MCMCStrategyConfig) and typed.noise_lr == 1e5
    strat, _ = make_strategy(cfg, 1.0, 100)
    assert isinstance(strat, TrainStrategy)
    assert (strat.cap_max, strat.noise_lr, strat.min_opacity, strat.refine_every,
            strat.refine_start_iter, strat.refine_stop_iter) == (5000, 1e5, 0.01, 50, 7, 900)

    given = {"name": "default", "prune_opa": 0.02, "grow_grad2d": 3e-4, "grow_scale3d": 0.02,
             "prune_scale3d": 0.2, "prune_scale2d": 0.3, "grow_scale2d": 0.07,
             "reset_every": 400, "refine_every": 25, "pause_refine_after_reset": 50,
             "revised_opacity": True}
    cfg = TrainConfig(strategy=given)
    assert cfg.strategy == "default" and cfg.densify_grad_threshold == 3e-4
    assert cfg.opacity_reset_interval == 400 and cfg.prune_opa == 0.02
    strat, state = make_strategy(cfg, 2.0)
    assert "grad2d" in state and state["scene_scale"] == 2.0
    for key, value in given.items():
        if key != "name":
            assert getattr(strat, key) == value, key
    assert strat.refine_scale2d_stop_iter == cfg.densify_until_iter  # 2D rule on
    # the typed config itself is accepted too, and the model dump stays flat
    cfg = TrainConfig(strategy=MCMCStrategyConfig(cap_max=777))
    assert cfg.strategy == "mcmc" and cfg.model_dump()["cap_max"] == 777


def test_strategy_names_and_flags_keep_working():
    cfg = tyro.cli(TrainConfig, args=["--strategy", "default", "--prune-opa", "0.01",
                                      "--noise-lr", "1000", "--densify-grad-threshold",
                                      "0.0005"])
    assert (cfg.strategy, cfg.prune_opa, cfg.noise_lr) == ("default", 0.01, 1000.0)
    typed = cfg.strategy_config()
    assert isinstance(typed, DefaultStrategyConfig)
    assert typed.prune_opa == 0.01 and typed.resolved_grow_grad2d() == 5e-4
    assert TrainConfig(strategy="mcmc", cap_max=10).strategy_config().cap_max == 10
    # the typed config owns the defaults the flat fields start from
    flat, typed = TrainConfig(strategy="default"), DefaultStrategyConfig()
    assert (flat.prune_opa, flat.grow_scale3d, flat.prune_scale3d) == (
        typed.prune_opa, typed.grow_scale3d, typed.prune_scale3d)
    assert TrainConfig().noise_lr == MCMCStrategyConfig().noise_lr == 5e5


def test_strategy_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="cap_max"):
        TrainConfig(strategy={"name": "mcmc", "cap_max": 5}, cap_max=6)
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig(strategy={"name": "mcmc", "bogus": 1})
    with pytest.raises(ConfigError, match="prune_opa"):
        TrainConfig(strategy={"name": "default", "prune_opa": 2.0})
    with pytest.raises(ConfigError, match="strategy"):
        TrainConfig(strategy="foo")


# --------------------------------------------------------------------------------------------
# Strategy hooks
# --------------------------------------------------------------------------------------------


def test_strategy_state_and_budget_hooks():
    mc, _ = make_strategy(TrainConfig(cap_max=1001), 1.0, 50)
    mc.counts["relocated"] = 7
    mc.budget_scale = 0.5
    sd = mc.state_dict()
    again, _ = make_strategy(TrainConfig(cap_max=1001), 1.0, 50)
    again.load_state_dict(sd)
    assert again.counts["relocated"] == 7 and again.cap_full == 500 and again.cap_max == 500
    again.set_budget_fraction(0.5)
    assert again.cap_max == 250
    mc, _ = make_strategy(TrainConfig(cap_max=1001), 1.0, 50)
    shares = []
    for rank in range(3):
        s, _ = make_strategy(TrainConfig(cap_max=1001), 1.0, 50)
        s.split_budget(rank, 3)
        shares.append(s.cap_max)
    assert shares == [334, 334, 333]
    # the default strategy has no budget: the hooks do nothing
    df, state = make_strategy(TrainConfig(strategy="default"), 1.0)
    df.set_budget_fraction(0.25)
    df.split_budget(1, 2)
    assert df.state_dict()["budget"] is None
    state["grad2d"] = torch.zeros(4)
    state["count"] = torch.zeros(3)
    assert set(df.per_gaussian_state(state, 4)) == {"grad2d"}


# --------------------------------------------------------------------------------------------
# The state is what a checkpoint saves and restores
# --------------------------------------------------------------------------------------------


def _config(**kw) -> TrainConfig:
    base = dict(strategy="default", max_steps=20, sh_degree=1, random_background=True,
                device="cpu", seed=5, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_train_state_round_trips_through_a_checkpoint(tmp_path, plush_scene, plush_scene_config,
                                                     strategy):
    cfg = _config(strategy=strategy, cap_max=5000)
    sc = plush_scene_config
    tr = Trainer(cfg, plush_scene, tmp_path / "a", scene_config=sc)
    tr.setup(None)
    assert isinstance(tr.state, TrainState) and tr.state.step == 0
    # move every part of the state away from its initial value
    for name, p in tr.params.items():
        p.grad = torch.randn_like(p)
        tr.optimizers[name].step()
    tr.state.sampler.next()
    torch.rand(3, generator=tr.state.bg_generator)
    tr.state.step = 4
    tr.state.train_seconds = 1.5
    tr.strategy.counts["refines"] = 3
    path = save_checkpoint(tmp_path / "step_4.pt", tr.checkpoint_payload())
    expected_next = torch.rand(5)     # the global generator continues from the checkpoint

    tr2 = Trainer(cfg, plush_scene, tmp_path / "b", scene_config=sc)
    tr2.setup(path)
    a, b = tr.state, tr2.state
    assert (b.step, b.train_seconds, b.num_initial, b.init_method) == (
        4, 1.5, a.num_initial, "checkpoint")
    for name in a.params:
        assert torch.equal(a.params[name].detach(), b.params[name].detach()), name
        sa, sb = a.optimizers[name].state_dict(), b.optimizers[name].state_dict()
        assert torch.equal(sa["state"][0]["exp_avg"], sb["state"][0]["exp_avg"]), name
    assert b.strategy.counts == a.strategy.counts
    assert [b.sampler.next() for _ in range(9)] == [a.sampler.next() for _ in range(9)]
    assert torch.equal(b.bg_generator.get_state(), a.bg_generator.get_state())
    assert torch.equal(torch.rand(5), expected_next)
    # the checkpoint holds the state's entries plus what identifies the run
    ck = load_checkpoint(path)
    assert set(ck) == set(a.state_dict()) | {"config", "scene", "backend", "version"}
