"""The typed-config mechanism: checked fields, nested from_dict, CLI flags from the classes."""

import argparse

import pytest

from leafe_jax.configs import ConfigError, add_flags, config, diff, field, from_dict, from_flags
from leafe_jax.eval.sweep import EvalConfig
from leafe_jax.interfaces.symbolic.pretrain import PretrainConfig
from leafe_jax.train.sft import SFTConfig


@config
class Inner:
    k: int = field(2, lo=1)
    rate: float = field(0.5, lo=0, hi=1)
    names: tuple[str, ...] = field(("a",), choices=("a", "b"))


@config
class Outer:
    inner: Inner = Inner(k=3)
    flag: bool = False
    maybe: int | None = None


def test_fields_are_checked_and_coerced():
    assert Inner(rate=1).rate == 1.0 and isinstance(Inner(rate=1).rate, float)
    assert Inner(names=["b", "a"]).names == ("b", "a")
    for kw, msg in (({"k": 0}, "k must be >= 1, got 0"), ({"k": 1.5}, "k must be an integer"),
                    ({"k": True}, "k must be an integer"), ({"rate": 1.5}, "rate must be <= 1"),
                    ({"rate": float("nan")}, "rate must be finite"), ({"names": "a"}, "must be a list"),
                    ({"names": ["c"]}, r"names must be one of \['a', 'b'\], got 'c'")):
        with pytest.raises(ConfigError, match=msg):
            Inner(**kw)
    with pytest.raises(ConfigError, match="maybe must be an integer"):
        Outer(maybe="3")


def test_from_dict_nests_and_names_the_path():
    o = from_dict(Outer, {"inner": {"rate": 0.25}})
    assert o.inner == Inner(k=3, rate=0.25)          # the parent's nested default is the base
    with pytest.raises(ConfigError, match=r"^inner.k must be >= 1, got 0$"):
        from_dict(Outer, {"inner": {"k": 0}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[inner\]: \['kk'\]"):
        from_dict(Outer, {"inner": {"kk": 0}})
    with pytest.raises(ConfigError, match="inner must be a section"):
        from_dict(Outer, {"inner": 3})
    assert diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]


def test_cli_flags_have_the_library_defaults():
    p = argparse.ArgumentParser()
    add_flags(p, PretrainConfig)
    assert from_flags(PretrainConfig, p.parse_args([])) == PretrainConfig()
    got = from_flags(PretrainConfig, p.parse_args(["--steps", "7", "--warmup-steps", "2",
                                                   "--demo-levels", "9"]))
    assert got.sft == SFTConfig(steps=7, batch_size=16, learning_rate=1e-3, warmup_steps=2)
    assert got.demo_levels == 9
    with pytest.raises(ConfigError, match="sft.steps must be >= 1"):
        from_flags(PretrainConfig, p.parse_args(["--steps", "0"]))
    e = argparse.ArgumentParser()
    add_flags(e, EvalConfig)
    assert from_flags(EvalConfig, e.parse_args(["--n", "4"])) == EvalConfig(n=4)
