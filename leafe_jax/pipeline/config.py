"""The pipeline's configuration: the library's own configs, nested, read from TOML.

    [experiment]        preset, model, seed, history_length      ExperimentConfig
    [base]              behaviour cloning (+ [base.sft])          interfaces.symbolic.pretrain.PretrainConfig
    [stage1]            training pool, strategies (+ [stage1.explore])   leafe.explore.ExploreConfig
    [stage2]            variants (+ [stage2.distill], [stage2.sft])       leafe.distill / train.sft
    [baselines]         methods, match_budget (+ [baselines.grpo], [baselines.early_experience])
    [eval]              held-out Pass@k                          eval.sweep.EvalConfig

The defaults are the README's small experiment (DESIGN §5: 6x6 / 2 boxes, ~1.6 M-parameter
policy, K = 8, D = 3, M = 2, 50 held-out levels x 128 samples); a TOML file holds only what
differs from them. Every value is checked when the config is read, and errors name the key.
``tiny()`` is the tests' and ``--tiny``'s seconds-scale variant.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib

from leafe_jax import configs
from leafe_jax.baselines.converge import ConvergeConfig
from leafe_jax.baselines.early_experience import EarlyExperienceConfig
from leafe_jax.baselines.grpo import GRPOConfig
from leafe_jax.configs import ConfigError, config, field
from leafe_jax.envs.sokoban.presets import PRESETS as ENV_PRESETS
from leafe_jax.eval.sweep import EvalConfig
from leafe_jax.interfaces.symbolic.pretrain import PretrainConfig
from leafe_jax.interfaces.symbolic.rollout import windowed
from leafe_jax.envs.host.registry import HOST_ENVS
from leafe_jax.envs.host.registry import SPLITS as HOST_SPLITS
from leafe_jax.interfaces.host.format import HostTextConfig
from leafe_jax.interfaces.text.format import TextConfig
from leafe_jax.interfaces.text.pretrain import TextPretrainConfig
from leafe_jax.leafe.distill import DistillConfig
from leafe_jax.leafe.explore import STRATEGIES, ExploreConfig
from leafe_jax.policy.config import PRESETS as MODEL_PRESETS
from leafe_jax.train.sft import SFTConfig


@dataclasses.dataclass(frozen=True)
class Variant:
    """A Stage-2 variant: what its dataset holds and what its model is called in reports."""
    rehearsal: bool = False
    e2p: bool = False
    from_demos: bool = False       # the BC control: the demonstrations, not the trees
    model_name: str | None = None
    tree: str = "rollback"         # the Stage-1 strategy whose trees it distils

    @property
    def from_tree(self) -> bool:
        return not self.from_demos


VARIANTS = {"leafe": Variant(rehearsal=True, e2p=True), "rehearsal": Variant(rehearsal=True),
            "e2p": Variant(e2p=True), "bc": Variant(from_demos=True, model_name="bc-control"),
            "leafe_self": Variant(rehearsal=True, e2p=True, tree="rollback_self",
                                  model_name="leafe-self")}
BASELINES = ("grpo", "grpo_converged", "early_experience")


AGENTS = ("symbolic", "text", "host")


@config
class ExperimentConfig:
    agent: str = field("symbolic", choices=AGENTS,
                       doc="symbolic: the from-scratch on-device policy; text: a pretrained "
                           "language model acting through text ([text]); host: the same in a "
                           "host-side environment ([host]: code, ScienceWorld, twc)")
    preset: str = field("6x6_2box", doc="Sokoban preset")
    model: str = field("sokoban-small", doc="policy preset")
    seed: int = field(0, lo=0)
    history_length: int = field(0, lo=0, doc="turns of history the policy sees beside the current "
                                             "one and the first observation (0: the whole episode)")
    max_seq_len: int = field(0, lo=0, doc="the policy's context length (0: the model preset's); "
                                          "larger boards need more than sokoban-small's 1024")
    remat: bool = field(False, doc="recompute each block's activations in the backward pass: "
                                   "less training memory for long contexts, the same update")

    def __post_init__(self):
        for key, value, known in (("preset", self.preset, ENV_PRESETS), ("model", self.model, MODEL_PRESETS)):
            if value not in known:
                raise ConfigError(key, f"must be one of {sorted(known)}, got {value!r}")

    def policy_config(self):
        """The policy's ``ModelConfig``: the preset (with ``max_seq_len`` and ``remat`` when
        set), windowed when ``history_length`` > 0."""
        cfg = MODEL_PRESETS[self.model]
        if self.max_seq_len:
            cfg = cfg.replace(max_seq_len=self.max_seq_len)
        if self.remat:
            cfg = cfg.replace(remat=True)
        return windowed(cfg, self.history_length)


@config
class Stage1Config:
    train_levels: int = field(128, lo=1, doc="Stage-1 / GRPO training tasks")
    strategies: tuple[str, ...] = field(("rollback", "independent", "refine"), choices=tuple(STRATEGIES))
    explore: ExploreConfig = ExploreConfig()

    def __post_init__(self):
        if not self.strategies:
            raise ConfigError("strategies", "must name at least one Stage-1 strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError("strategies", f"lists a strategy twice: {list(self.strategies)}")


@config
class Stage2Config:
    variants: tuple[str, ...] = field(("leafe", "rehearsal"), choices=tuple(VARIANTS))
    distill: DistillConfig = DistillConfig()
    sft: SFTConfig = SFTConfig(steps=50, batch_size=16, learning_rate=3e-4)

    def __post_init__(self):
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError("variants", f"lists a variant twice: {list(self.variants)}")


@config
class BaselinesConfig:
    """GRPO-RLVR and Early Experience from the same base policy, at the env-step budget that
    LEAFE's Stage 1 spent (``match_budget``); ``grpo_converged`` trains GRPO until Pass@1 on
    the validation pool stops improving (``converge``), capped at a multiple of that budget."""
    methods: tuple[str, ...] = field((), choices=BASELINES)
    match_budget: bool = True
    grpo: GRPOConfig = GRPOConfig()
    converge: ConvergeConfig = ConvergeConfig()     # grpo_converged: validation, patience, cap
    early_experience: EarlyExperienceConfig = EarlyExperienceConfig()


TEXT_STRATEGIES = ("rollback", "independent", "refine", "rollback_oracle", "rollback_self")


@config
class TextSection:
    """The text agent (``experiment.agent = "text"``): the model, how it sees the game, its
    warm-up."""
    model: str = field("smollm2-135m-instruct", doc="pretrained model: an embedded name, a .gguf "
                                                    "file, a Hugging Face directory or a gs:// URI")
    format: TextConfig = TextConfig()
    base: TextPretrainConfig = TextPretrainConfig()
    zero_shot: bool = field(True, doc="also evaluate the pretrained model as it is")
    mesh: tuple[int, ...] = field((1, 1, 1), lo=-1, doc="device mesh (data, fsdp, tp) of every "
                                  "text stage: episodes over data x fsdp, weights sharded by the "
                                  "model's rules; one -1 takes the remaining devices")
    dtype: str = field("auto", choices=("auto", "float32", "bf16-mixed", "bfloat16"),
                       doc="dtype policy of the loaded weights (auto: float32 on CPU, bf16-mixed "
                           "- float32 master weights, bfloat16 compute - on TPU/GPU)")

    def __post_init__(self):
        if len(self.mesh) != 3 or 0 in self.mesh or list(self.mesh).count(-1) > 1:
            raise ConfigError("text.mesh", f"three sizes (data, fsdp, tp), at most one -1, none 0; "
                                           f"got {list(self.mesh)}")


@config
class HostSection(TextSection):
    """The language model in a host-side environment (``experiment.agent = "host"``): which
    env and splits, its worker processes, and - as ``[text]`` - the model, its placement,
    the prompt format and the warm-up (``base.demo_levels``: demo tasks, from the env's gold
    demonstrations)."""
    env: str = field("mbpp", choices=tuple(HOST_ENVS), doc="the host environment")
    data: str = field("", doc="mbpp: the path of mbpp.jsonl or sanitized-mbpp.json")
    train_split: str = field("train", doc="split of the demo and Stage-1 tasks")
    eval_split: str = field("test", doc="split of the held-out tasks")
    transfer_env: str = field("", choices=("",) + tuple(HOST_ENVS),
                              doc="also evaluate on this env's test split (e.g. humaneval after mbpp)")
    task_names: tuple[str, ...] = field((), doc="scienceworld: the tasks (default: all 30)")
    variations: int = field(2, lo=1, doc="scienceworld: variations of each task in a split")
    workers: int = field(2, lo=1, doc="env worker processes")
    step_timeout_s: float = field(60.0, lo=1.0, doc="a worker that does not answer an env step "
                                                    "within this is restarted")
    format: HostTextConfig = HostTextConfig()
    base: TextPretrainConfig = TextPretrainConfig(demo_levels=16)

    def __post_init__(self):
        super().__post_init__()
        for key in ("train_split", "eval_split"):
            if getattr(self, key) not in HOST_SPLITS[self.env]:
                raise ConfigError(key, f"env {self.env!r} has no split {getattr(self, key)!r} "
                                       f"(it has {list(HOST_SPLITS[self.env])})")


@config
class PipelineConfig:
    experiment: ExperimentConfig = ExperimentConfig()
    base: PretrainConfig = PretrainConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    baselines: BaselinesConfig = BaselinesConfig()
    eval: EvalConfig = EvalConfig()
    text: TextSection = TextSection()
    host: HostSection = HostSection()

    def __post_init__(self):
        if self.experiment.agent == "host" and not self.host.data and "mbpp" in (
                self.host.env, self.host.transfer_env):
            raise ConfigError("host.data", "the mbpp env needs the path of mbpp.jsonl or "
                                           "sanitized-mbpp.json")
        if self.experiment.agent in ("text", "host"):
            odd = [s for s in self.stage1.strategies if s not in TEXT_STRATEGIES]
            if odd:
                raise ConfigError("stage1.strategies", f"{odd} are symbolic-only (the text agent has "
                                                       f"{list(TEXT_STRATEGIES)})")
            odd = [m for m in self.baselines.methods if m != "grpo"]
            if odd:
                raise ConfigError("baselines.methods", f"{odd} do not run on the text agent yet "
                                                       "(grpo does)")
            if self.experiment.agent == "host" and "rollback_oracle" in self.stage1.strategies:
                raise ConfigError("stage1.strategies", "a host env has no oracle reflector")
            if self.experiment.agent == "host" and self.stage1.explore.interrupt_every:
                raise ConfigError("stage1.explore.interrupt_every", "the host agent reflects on "
                                  "failure only (no periodic interruption yet)")
            if self.experiment.history_length:
                raise ConfigError("experiment.history_length", "the text agent's window is "
                                                               "text.format.history_length")
        tree_variants = [v for v in self.stage2.variants if VARIANTS[v].from_tree]
        budgeted = (self.baselines.methods and self.baselines.match_budget) or \
            "grpo_converged" in self.baselines.methods
        needs = {}
        for v in tree_variants:
            needs.setdefault(VARIANTS[v].tree, []).append(v)
        if budgeted:
            needs.setdefault("rollback", []).append("the matched baseline budget")
        for strategy, users in needs.items():
            if strategy not in self.stage1.strategies:
                raise ConfigError("stage1.strategies", f"must include {strategy!r} (it feeds {users})")

    def to_dict(self) -> dict:
        return configs.to_dict(self)

    @property
    def lm(self):
        """The language-model section of this run: ``[host]`` or ``[text]``."""
        return self.host if self.experiment.agent == "host" else self.text

    @property
    def uses_tree(self) -> bool:
        return "rollback" in self.stage1.strategies


def from_dict(d: dict, base: PipelineConfig | None = None) -> PipelineConfig:
    return configs.from_dict(PipelineConfig, d, base=base)


def _parse_override(o: str) -> tuple[list[str], object]:
    if "=" not in o or "." not in o.split("=", 1)[0]:
        raise ConfigError("", f"override {o!r} is not section.key=value")
    k, v = o.split("=", 1)
    try:
        val = tomllib.loads(f"v = {v}")["v"]
    except tomllib.TOMLDecodeError:
        val = v                                   # a bare string
    return k.strip().split("."), val


def apply_overrides(d: dict, overrides) -> dict:
    """``section.key=value`` overrides (values in TOML syntax) set into a nested dict."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for o in overrides:
        keys, val = _parse_override(o)
        cur = d
        for k in keys[:-1]:
            nxt = cur.get(k)
            cur[k] = nxt = dict(nxt) if isinstance(nxt, dict) else {}
            cur = nxt
        cur[keys[-1]] = val
    return d


def read_toml(path: str) -> dict:
    if os.path.isdir(path):
        raise ConfigError("", f"{path} is a directory, not a pipeline config (a .toml file)")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"no pipeline config at {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("", f"{path}: not valid TOML: {e}") from None


def load(path: str | None = None, overrides=(), *, base: PipelineConfig | None = None) -> PipelineConfig:
    """A TOML file (or nothing) over ``base`` (default: the built-in defaults), then the
    overrides - each applied as given, whatever the base."""
    d = read_toml(path) if path else {}
    try:
        return from_dict(apply_overrides(d, overrides), base=base)
    except ConfigError as e:
        raise ConfigError(e.path, f"{e.msg} (in {path})" if path else e.msg) from None


def small() -> PipelineConfig:
    return PipelineConfig()


def tiny() -> PipelineConfig:
    """Seconds-scale variant for the tests and ``--tiny`` (about a minute on 2 cores), sized
    so that it has successful roots *and* successful rollback branches (non-empty e2p data)."""
    return from_dict({"experiment": {"preset": "verl6x6", "model": "sokoban-tiny"},
                      "base": {"demo_levels": 32, "sft": {"steps": 40, "batch_size": 4}},
                      "stage1": {"train_levels": 16, "explore": {"budget": 6, "max_depth": 2}},
                      "stage2": {"sft": {"steps": 1, "batch_size": 4}},
                      "baselines": {"grpo": {"tasks_per_step": 2, "group_size": 2},
                                    "early_experience": {"alternatives": 1}},
                      "eval": {"levels": 4, "n": 8}})
