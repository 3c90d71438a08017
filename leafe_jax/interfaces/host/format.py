"""How the host text agent sees a game and answers: prompts rendered from the episode record
(the task's first observation, a window of past steps, the experiences, the valid actions
where the env lists them), answers parsed as an ``<action>`` tag or a program, the feedback
reflector's experiences in words, the reflection prompt.

The format follows verl-agent's text-game prompts (ALFWorld / WebShop: the task, the recent
history, the admissible actions, the answer inside ``<action></action>``); the wording is
our own.
"""

from __future__ import annotations

import dataclasses
import re

from leafe_jax.configs import config, field
from leafe_jax.interfaces.text.format import REFLECTION_REQUEST

NO_ACTION = "(no action)"


@config
class HostTextConfig:
    """How the host text agent sees the game and answers (the pipeline's ``[host.format]``)."""
    max_steps: int = field(20, lo=1, doc="turns per episode (the agent's step limit)")
    history_length: int = field(2, lo=0, doc="past steps (action + what came of it) in a prompt")
    max_new_tokens: int = field(48, lo=1, doc="response budget per turn")
    think: bool = field(False, doc="ask for <think>...</think> before the action")
    obs_tokens: int = field(384, lo=16, doc="token slots kept of one observation")
    valid_actions_shown: int = field(24, lo=0, doc="valid actions listed (where the env has them)")
    experience_tokens: int = field(96, lo=8, doc="token slots of one experience")
    prompt_tokens: int = field(2048, lo=64, doc="token slots of one turn's prompt")
    reflection_new_tokens: int = field(96, lo=8, doc="response budget of a reflection")


@dataclasses.dataclass(frozen=True)
class Step:
    """What a prompt shows of one past step."""
    action: str                  # the env action, or NO_ACTION for an unparsable answer
    result: str                  # the observation it led to (or why nothing happened)


def answer_request(answer: str, think: bool) -> str:
    if answer == "code":
        return "Answer with the whole program in one ```python code block."
    if think:
        return ("Think briefly inside <think></think>, then give one action inside "
                "<action></action>, for example <think>...</think><action>look around</action>.")
    return "Give your next action inside <action></action>, for example <action>look around</action>."


def turn_prompt(task_obs: str, history: list[Step], step: int, experiences: list[str],
                valid_actions: list[str], answer: str, cfg: HostTextConfig) -> str:
    """The user message of turn ``step`` (0-based; after the shared instruction)."""
    parts = [f"Task:\n{task_obs}\n\n"]
    shown = history[-cfg.history_length:] if cfg.history_length else []
    if shown:
        first = step - len(shown)
        parts.append(f"You have taken {step} step(s). Your last {len(shown)}:\n")
        for i, h in enumerate(shown):
            parts.append(f"Step {first + i + 1}: {h.action}\nResult: {h.result}\n")
        parts.append("\n")
    elif step:
        parts.append(f"You have taken {step} step(s).\n\n")
    if experiences:
        parts.append("Lessons from your earlier attempts at this task:\n")
        parts.extend(f"- {e}\n" for e in experiences)
        parts.append("\n")
    if valid_actions and cfg.valid_actions_shown:
        parts.append("Some valid actions: " + ", ".join(valid_actions[: cfg.valid_actions_shown]) + "\n\n")
    parts.append(answer_request(answer, cfg.think))
    return "".join(parts)


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", re.S | re.I)


def parse_answer(text: str, answer: str, think: bool = False) -> tuple[str, bool]:
    """``(env action, valid)``. ``action``: the text inside the first ``<action>`` ...
    ``</action>``, lower-cased with its whitespace collapsed (as verl-agent takes it);
    ``code``: the last fenced code block (an unclosed one too: a response may be cut at its
    budget), else the whole answer. Empty or missing is invalid."""
    if answer == "code":
        blocks = _FENCE.findall(text)
        prog = (blocks[-1] if blocks else text).strip("\n")
        return prog, bool(prog.strip())
    low = text.lower()
    a, b = low.find("<action>"), low.find("</action>")
    if a == -1 or b == -1 or b < a:
        return NO_ACTION, False
    act = " ".join(low[a + len("<action>"): b].split())
    ok = bool(act) and not (think and ("<think>" not in low or "</think>" not in low))
    return (act if act else NO_ACTION), ok


def rank_actions(valid, task: str, k: int) -> list[str]:
    """The ``k`` valid actions to list: those sharing the most words (of 4+ letters) with the
    task's text first, the env's own order among equals (ScienceWorld lists 1 000+
    alphabetically, so its first few say little)."""
    words = set(re.findall(r"[a-z]{4,}", task.lower()))
    score = lambda a: -len(words & set(re.findall(r"[a-z]{4,}", a.lower())))
    return [a for _, a in sorted(((score(a), i), a) for i, a in enumerate(valid))][:k]


def bare_answer(action: str, answer: str) -> str:
    """An action as a demonstration answers it: in a code block, or inside the action tag."""
    return f"```python\n{action}\n```" if answer == "code" else f"<action>{action}</action>"


def no_action_result(answer: str) -> str:
    if answer == "code":
        return "Your answer held no program, so nothing was run."
    return "Your answer had no action inside <action></action>, so nothing happened."


def snippet(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def experience_text(step: int, action: str, result: str, answer: str) -> str:
    """The feedback reflector's experience: nothing improved from this step on."""
    if action == NO_ACTION:
        return (f"At step {step + 1} your answer held no action; "
                + ("answer with a program in a code block." if answer == "code"
                   else "give exactly one action inside <action></action>."))
    what = "the program" if answer == "code" else f"'{snippet(action, 80)}'"
    return (f"From step {step + 1} on nothing brought you closer to the goal: {what} led to "
            f"\"{snippet(result)}\". Do something different at that step.")


def reflection_prompt(task_obs: str, steps: list[Step], won: bool) -> str:
    parts = [f"Task:\n{task_obs}\n\nYour attempt:\n"]
    for i, s in enumerate(steps):
        parts.append(f"Step {i + 1}: {snippet(s.action, 200)}\nResult: {snippet(s.result, 300)}\n")
    parts.append("\nThe task was completed.\n\n" if won else "\nThe task was not completed.\n\n")
    parts.append(REFLECTION_REQUEST)
    return "".join(parts)
