"""Text games as host environments: ScienceWorld (Wang et al. 2022) and TextWorldExpress's
TextWorld Commonsense ``twc`` (Jansen & Cote 2022; the closest offline stand-in for
ALFWorld's household tasks, whose game files are in no package). Both run a JVM inside the
worker process (``pip install scienceworld==1.2.3 textworld-express==1.1.0``; Java >= 8).

Neither can snapshot its state: rollback is reset + replay (``EnvPool``), which both
reproduce exactly (tested). Each lists its valid actions (``StepOut.valid_actions``) and
has gold action sequences, the demonstrations of a behaviour-cloning warm-up
(``demonstration(task)``).
"""

from __future__ import annotations

from leafe_jax.envs.host.protocol import StepOut

SCIENCEWORLD_SPLITS = ("train", "dev", "test")


def _need(module: str, pip: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is not installed: pip install {pip} (and Java >= 8)") from None


class ScienceWorld:
    """Tasks = (task name, variation) of one split; ``task_names`` (default: all 30) and
    ``variations`` (the first that many of each task's split) choose them. Won at score
    100; done also when the task fails (score < 0) or the env's step limit is reached."""

    instruction = (
        "You are an agent in ScienceWorld, a text simulation of a house with rooms, objects, "
        "substances, devices and living things. Each turn you read what you observe and "
        "give one action in the simulator's own words, for example: look around, open door "
        "to kitchen, go to kitchen, pick up thermometer, focus on water, use thermometer in "
        "inventory on water, wait1. The score rises as you complete parts of the task.\n\n")
    answer = "action"

    def __init__(self, split: str = "train", task_names: tuple[str, ...] | None = None,
                 variations: int | None = 2, simplification: str = "easy", step_limit: int = 100,
                 limit: int | None = None):
        if split not in SCIENCEWORLD_SPLITS:
            raise ValueError(f"unknown ScienceWorld split {split!r}; known: {SCIENCEWORLD_SPLITS}")
        sw = _need("scienceworld", "scienceworld==1.2.3")
        self.env = sw.ScienceWorldEnv("", envStepLimit=step_limit)
        self.simplification = simplification
        names = self.env.get_task_names()
        unknown = sorted(set(task_names or ()) - set(names))
        if unknown:
            raise ValueError(f"unknown ScienceWorld tasks {unknown}; known: {names}")
        per_task = []
        for name in task_names or names:
            self.env.load(name, 0, simplification)
            vs = {"train": self.env.get_variations_train, "dev": self.env.get_variations_dev,
                  "test": self.env.get_variations_test}[split]()
            per_task.append([(name, int(v)) for v in list(vs)[:variations]])
        # round robin: one variation of every task before the next variation of any
        width = max(len(v) for v in per_task)
        self.tasks = [v[i] for i in range(width) for v in per_task if i < len(v)][:limit]
        self.num_tasks = len(self.tasks)

    def _load(self, task: int, gold: bool = False):
        name, var = self.tasks[task]
        self.env.load(name, var, self.simplification, generateGoldPath=gold)

    def reset(self, task: int) -> StepOut:
        self._load(task)
        obs, info = self.env.reset()
        return StepOut(f"{info['taskDesc'].strip()}\n\n{obs.strip()}",
                       valid_actions=tuple(info.get("valid", ())))

    def step(self, action: str) -> StepOut:
        obs, _, done, info = self.env.step(action)
        score = int(info["score"])
        won = score >= 100
        return StepOut(obs.strip(), feedback=obs.strip(), reward=score / 100.0,
                       done=bool(done or won or score < 0), won=won,
                       valid_actions=tuple(info.get("valid", ())))

    def demonstration(self, task: int) -> list[str]:
        self._load(task, gold=True)
        self.env.reset()
        return list(self.env.get_gold_action_sequence())

    def close(self) -> None:
        self.env.close()


class TextWorldCommonsense:
    """TextWorldExpress ``twc``: put household objects where they belong. Tasks = seeds of
    a fold (``train`` / ``dev`` / ``test``); ``params`` are TWX's game parameters."""

    instruction = (
        "You are tidying up a house in a text game. Put every misplaced object where it "
        "belongs. Each turn you read what you observe and give one action, for example: "
        "look around, inventory, open wardrobe, take clean brown shirt, put clean brown "
        "shirt in wardrobe, move north.\n\n")
    answer = "action"

    def __init__(self, fold: str = "train", num_tasks: int = 16,
                 params: str = "numLocations=1,numItemsToPutAway=1,includeDoors=0,limitInventorySize=0",
                 step_limit: int = 50):
        twx = _need("textworld_express", "textworld-express==1.1.0")
        self.env = twx.TextWorldExpressEnv(envStepLimit=step_limit)
        self.env.load(gameName="twc", gameParams=params)
        seeds = {"train": self.env.getValidSeedsTrain, "dev": self.env.getValidSeedsDev,
                 "test": self.env.getValidSeedsTest}
        if fold not in seeds:
            raise ValueError(f"unknown twc fold {fold!r}; known: {sorted(seeds)}")
        self.fold, self.seeds = fold, list(seeds[fold]())[:num_tasks]
        self.num_tasks = len(self.seeds)

    def reset(self, task: int, gold: bool = False) -> StepOut:
        obs, info = self.env.reset(seed=self.seeds[task], gameFold=self.fold, generateGoldPath=gold)
        return StepOut(f"{info['taskDescription'].strip()}\n\n{obs.strip()}",
                       valid_actions=tuple(info["validActions"]))

    def step(self, action: str) -> StepOut:
        obs, _, done, info = self.env.step(action)
        return StepOut(obs.strip(), feedback=obs.strip(), reward=float(info["score"]),
                       done=bool(done), won=bool(info["tasksuccess"]),
                       valid_actions=tuple(info["validActions"]))

    def demonstration(self, task: int) -> list[str]:
        self.reset(task, gold=True)
        gold = list(self.env.getGoldActionSequence())
        return gold[1:] if gold and gold[0] == "look around" else gold

    def close(self) -> None:
        self.env.close()
