"""The pipeline's configuration: nested frozen dataclasses read from TOML, unknown keys refused.

    [pipeline]  preset, model, seed
    [base]      behaviour cloning of the base policy
    [stage1]    exploration (strategy budget K, depth D, children M, ablation switches)
    [stage2]    distillation data and SFT (variants: leafe, rehearsal, e2p, bc)
    [eval]      held-out Pass@k

``small()`` is the README's default (DESIGN §5: 6x6 / 2 boxes, ~1.6 M-parameter policy,
K = 8, D = 3, M = 2, 50 held-out levels x 128 samples); ``tiny()`` the tests' variant.
"""

from __future__ import annotations

import dataclasses
import tomllib


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineSection:
    preset: str = "6x6_2box"
    model: str = "sokoban-small"
    seed: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseSection:
    demo_levels: int = 2000
    exp_per_episode: int = 2
    steps: int = 150
    batch_size: int = 16
    lr: float = 1e-3


# Stage-1 entries: the three strategies at equal budget, and rollback ablations (named so that
# they sit beside the others in the report; only "rollback" feeds Stage 2).
STAGE1 = {"rollback": {}, "independent": {}, "refine": {},
          "rollback_oracle": {"reflector": "oracle"},      # exact-solver reflector: an upper bound
          "rollback_mask": {"use_mask": True},              # experience + forbidden-action mask
          "rollback_mask_only": {"use_mask": True, "use_experience": False}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage1Section:
    train_levels: int = 128
    strategies: tuple = ("rollback", "independent", "refine")   # the first feeds Stage 2
    budget: int = 8
    max_depth: int = 3
    children: int = 2
    use_experience: bool = True
    use_mask: bool = False
    reflect_every: int = 0
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage2Section:
    variants: tuple = ("leafe", "rehearsal")     # + "bc": the control (compare config)
    steps: int = 50
    batch_size: int = 16
    lr: float = 3e-4
    beta: float = 1.0
    e2p_suffix: bool = False
    dedupe: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaselinesSection:
    """GRPO-RLVR and Early Experience from the same base policy, at the env-step budget that
    LEAFE's Stage 1 spent (``match_budget``)."""
    methods: tuple = ()                 # "grpo", "early_experience"
    match_budget: bool = True
    grpo_steps: int = 20                # rollout batches when match_budget is false
    grpo_tasks_per_step: int = 16
    grpo_group_size: int = 8
    grpo_beta: float = 0.04
    grpo_eps: float = 0.2
    grpo_epochs: int = 1
    grpo_minibatches: int = 2
    grpo_lr: float = 1e-4
    grpo_shaped: float = 0.0
    ee_alternatives: int = 3            # alternative actions per demo state
    ee_wm_fraction: float = 0.5         # share of the Stage-2 update steps on world modelling
    ee_demo_levels: int = 200           # when match_budget is false
    ee_lr: float = 3e-4


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSection:
    levels: int = 50
    n: int = 128
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    pipeline: PipelineSection = PipelineSection()
    base: BaseSection = BaseSection()
    stage1: Stage1Section = Stage1Section()
    stage2: Stage2Section = Stage2Section()
    baselines: BaselinesSection = BaselinesSection()
    eval: EvalSection = EvalSection()

    def __post_init__(self):
        for name, v in (("base.steps", self.base.steps), ("stage1.train_levels", self.stage1.train_levels),
                        ("stage2.steps", self.stage2.steps), ("eval.levels", self.eval.levels),
                        ("eval.n", self.eval.n), ("base.demo_levels", self.base.demo_levels)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        unknown = [s for s in self.stage1.strategies if s not in STAGE1]
        if unknown:
            raise ValueError(f"unknown stage1 strategies {unknown}; known: {sorted(STAGE1)}")
        if self.stage1.strategies[0] != "rollback" and "leafe" in self.stage2.variants:
            raise ValueError("stage1.strategies must start with 'rollback' (it feeds Stage 2)")
        bad = set(self.baselines.methods) - {"grpo", "early_experience"}
        if bad:
            raise ValueError(f"unknown baselines {sorted(bad)}; known: grpo, early_experience")
        unknown = set(self.stage2.variants) - {"leafe", "rehearsal", "e2p", "bc"}
        if unknown:
            raise ValueError(f"unknown stage2 variants {sorted(unknown)}; known: leafe, rehearsal, e2p, bc")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}
_TYPES = {"pipeline": PipelineSection, "base": BaseSection, "stage1": Stage1Section,
          "stage2": Stage2Section, "baselines": BaselinesSection, "eval": EvalSection}


def from_dict(d: dict, base: PipelineConfig | None = None) -> PipelineConfig:
    base = base or PipelineConfig()
    out = {}
    for sec, cls in _TYPES.items():
        cur = dataclasses.asdict(getattr(base, sec))
        given = dict(d.get(sec, {}))
        unknown = sorted(set(given) - set(cur))
        if unknown:
            raise ValueError(f"unknown config key(s) in [{sec}]: {unknown}; known: {sorted(cur)}")
        for k, v in given.items():
            if isinstance(cur[k], tuple):
                v = tuple(v)
            elif isinstance(cur[k], bool) and not isinstance(v, bool):
                raise ValueError(f"[{sec}] {k} must be true/false, got {v!r}")
            elif isinstance(cur[k], (int, float)) and not isinstance(cur[k], bool):
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise ValueError(f"[{sec}] {k} must be a number, got {v!r}")
                v = type(cur[k])(v)
            cur[k] = v
        out[sec] = cls(**cur)
    extra = sorted(set(d) - set(_TYPES))
    if extra:
        raise ValueError(f"unknown config section(s) {extra}; known: {sorted(_TYPES)}")
    return PipelineConfig(**out)


def load(path: str | None, overrides: list[str] = ()) -> PipelineConfig:
    """TOML file (or defaults) plus ``section.key=value`` overrides (values in TOML syntax)."""
    d: dict = {}
    if path:
        try:
            with open(path, "rb") as fh:
                d = tomllib.load(fh)
        except FileNotFoundError:
            raise FileNotFoundError(f"no pipeline config at {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    for o in overrides:
        if "=" not in o or "." not in o.split("=", 1)[0]:
            raise ValueError(f"override {o!r} is not section.key=value")
        k, v = o.split("=", 1)
        sec, key = k.split(".", 1)
        try:
            val = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            val = v                                   # a bare string
        d.setdefault(sec, {})[key] = val
    return from_dict(d)


def small() -> PipelineConfig:
    return PipelineConfig()


def tiny() -> PipelineConfig:
    """Seconds-scale variant for the tests (an untrained-scale policy; shapes only)."""
    return from_dict({"pipeline": {"preset": "verl6x6", "model": "sokoban-tiny"},
                      "base": {"demo_levels": 8, "steps": 2, "batch_size": 4},
                      "stage1": {"train_levels": 4, "budget": 4, "max_depth": 2},
                      "stage2": {"steps": 1, "batch_size": 4},
                      "baselines": {"grpo_tasks_per_step": 2, "grpo_group_size": 2,
                                    "ee_alternatives": 1},
                      "eval": {"levels": 3, "n": 4}})
