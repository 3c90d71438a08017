"""Text Sokoban for language models: prompts, action parsing, feedback in words, reflections.

The format follows verl-agent's Sokoban agent (github.com/langfengQ/verl-agent,
``agent_system/environments/prompts/sokoban.py`` and the ``sokoban_projection`` of its env
package): the grid in RAGEN / gym-sokoban symbols (``#`` wall, ``_`` floor, ``O`` target,
``X`` box, ``√`` box on target, ``P`` player, ``S`` player on target), the rules and the
admissible actions in the instruction, a window of the last ``history_length``
observations and actions, and the answer inside ``<action>...</action>`` (optionally after
``<think>...</think>``). The prompt text here is our own.

Parsing is verl-agent's: the answer is lower-cased, the text between the first ``<action>``
and the first ``</action>`` is taken, and the first action word of the pool *in pool order*
(up, down, left, right) found in it is the action - so ``<action>left or up</action>`` is
``up``, as there. An answer without both tags, or without an action word between them, is
invalid: a no-op step (``INVALID``) flagged invalid, whose feedback says so. verl-agent also
accepts ``still`` (its no-op, valid); our environment has four actions, so ``still`` is an
invalid answer here. With ``think=True`` an answer without both think tags is flagged
invalid but its action is still taken (verl-agent's rule).

Feedback in words comes from the environment's diagnostics (``Sokoban.step_env`` info): a
bump into a wall or an immovable box, a push, a box onto / off a target, a push onto a dead
square or into a frozen block ("can never reach a target"), no progress for N steps.

Reflections (the model as its own reflector): ``reflection_prompt`` shows the task, the
trajectory with its feedback and asks for ``<rollback>k</rollback><experience>...
</experience>`` (k = the 1-based step to take back) or ``<rollback>none</rollback>``;
``parse_reflection`` says which of ok / none / malformed / out_of_range an answer is.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from leafe_jax.configs import config, field
from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban.render import render_text

ACTIONS = C.ACTION_NAMES                # ("up", "down", "left", "right"), ids 0..3
INVALID = C.NUM_ACTIONS                 # the env's no-op id for an invalid answer (4)
REASONS = ("deadlock", "bump", "no_progress", "loop")


@config
class TextConfig:
    """How the text agent sees the game and answers."""
    history_length: int = field(2, lo=0, doc="past observation/action pairs shown in a prompt")
    max_new_tokens: int = field(32, lo=1, doc="response budget per turn")
    think: bool = field(False, doc="ask for <think>...</think> before the action (off on CPU: "
                                   "every generated token counts)")
    no_progress_steps: int = field(5, lo=1, doc="feedback says so after this many steps without "
                                                "a box coming closer to a target")
    experience_tokens: int = field(64, lo=8, doc="token slots of one experience")
    prompt_tokens: int = field(1024, lo=64, doc="token slots of one turn's prompt")
    reflection_new_tokens: int = field(64, lo=8, doc="response budget of a reflection")


# ---------------------------------------------------------------------------- prompts
INSTRUCTION = (
    "You are playing Sokoban. Push every box onto a target to win.\n"
    "Symbols: # wall, _ floor, O target, X box, \u221a box on a target, P you, S you on a target.\n"
    "Rules: each action moves you one cell up, down, left or right. Walking into a box pushes "
    "it one cell in the same direction if the cell behind it is free. You cannot pull a box, "
    "push two boxes at once, or walk through walls. A box pushed against a wall or into a "
    "corner away from the targets can never be brought back.\n"
    "Admissible actions: up, down, left, right.\n\n")


ANSWER = "<action>{action}</action>"     # a demonstration's answer (no thinking)


def answer_request(think: bool) -> str:
    if think:
        return ("Think briefly inside <think></think>, then give one admissible action inside "
                "<action></action>, for example <think>...</think><action>left</action>.")
    return "Answer with one admissible action inside <action></action>, for example <action>left</action>."


def grid_text(obs_HxW) -> str:
    return render_text(obs_HxW)


@dataclasses.dataclass(frozen=True)
class Turn:
    """What a prompt shows of one past step."""
    obs: np.ndarray          # the observation before the action
    action: int              # 0..3, or INVALID
    feedback: str


def turn_prompt(step: int, obs, history: list[Turn], experiences: list[str], cfg: TextConfig,
                steps_taken: int | None = None) -> str:
    """The user message of turn ``step`` (0-based): the window of past turns, the current
    grid, the experiences that apply here (right before the answer request) and the request.
    ``INSTRUCTION`` is not included: it is the shared prefix of every prompt."""
    parts = []
    shown = history[-cfg.history_length:] if cfg.history_length else []
    if shown:
        first = step - len(shown)
        parts.append(f"You have taken {step} step(s). Your last {len(shown)}:\n")
        for i, h in enumerate(shown):
            word = ACTIONS[h.action] if h.action < len(ACTIONS) else "(invalid answer)"
            parts.append(f"Step {first + i + 1}, observation:\n{grid_text(h.obs)}\n"
                         f"Action: {word}. Feedback: {h.feedback}\n")
        parts.append("\n")
    parts.append(f"Step {step + 1}, current observation:\n{grid_text(obs)}\n\n")
    if experiences:
        parts.append("Lessons from your earlier attempts at this level:\n")
        parts.extend(f"- {e}\n" for e in experiences)
        parts.append("\n")
    parts.append(answer_request(cfg.think))
    return "".join(parts)


# ---------------------------------------------------------------------------- parsing
def parse_action(text: str, think: bool = False) -> tuple[int, bool]:
    """``(action, valid)`` of a model's answer, as verl-agent parses it (module docstring);
    an unparsable answer is ``(INVALID, False)``."""
    low = text.lower()
    a, b = low.find("<action>"), low.find("</action>")
    if a == -1 or b == -1:
        return INVALID, False
    inside = low[a + len("<action>"): b].strip()
    action = next((i for i, w in enumerate(ACTIONS) if w in inside), INVALID)
    valid = action != INVALID
    if think and ("<think>" not in low or "</think>" not in low):
        valid = False
    return action, valid


def response_end(text: str) -> int | None:
    """Index just past the first ``</action>`` (case-insensitive), or None."""
    i = text.lower().find("</action>")
    return None if i == -1 else i + len("</action>")


# ---------------------------------------------------------------------------- feedback
def feedback_text(info: dict, *, bumped_wall: bool, steps_since_progress: int,
                  no_progress_steps: int) -> str:
    """One step's feedback in words from the env's diagnostic flags (host booleans)."""
    if info["invalid_action"]:
        return ("Your answer had no admissible action inside <action></action>, so nothing "
                "happened.")
    if info["bumped"]:
        out = ["You walked into a wall: nothing moved." if bumped_wall
               else "The box could not move (a wall or another box is behind it): nothing moved."]
    elif info["pushed"]:
        out = ["You pushed a box."]
        if info["box_on_target"]:
            out.append("The box is now on a target.")
        if info["box_off_target"]:
            out.append("The box came off its target.")
        if info["deadlock"]:
            out.append("That box is now stuck where it can never reach a target: this level "
                       "can no longer be solved.")
    else:
        out = ["You moved."]
    if info["solved"]:
        out.append("Every box is on a target: you solved the level!")
    elif steps_since_progress and steps_since_progress % no_progress_steps == 0:
        out.append(f"No box has come closer to a target in the last {steps_since_progress} steps.")
    return " ".join(out)


# ---------------------------------------------------------------------------- experiences
_CONSEQUENCE = {
    "deadlock": "pushed a box where it can never reach a target",
    "bump": "moved nothing",
    "no_progress": "started a run of moves that brought no box closer to a target",
    "loop": "only led back to a position you had already been in",
}


def experience_text(reason: str, action: int, row: int, col: int) -> str:
    """The feedback reflector's experience in words: what went wrong at tau and the fix."""
    if action >= len(ACTIONS):
        return (f"At row {row + 1}, column {col + 1} your answer was not an admissible action; "
                "answer with exactly one of up, down, left, right inside <action></action>.")
    return (f"Moving {ACTIONS[action]} from row {row + 1}, column {col + 1} "
            f"{_CONSEQUENCE[reason]}. Choose a different action there.")


# ---------------------------------------------------------------------------- reflections
REFLECTION_REQUEST = (
    "Look back at this attempt. Name the step where it first went wrong and what to do "
    "instead. Answer as <rollback>k</rollback><experience>what went wrong and what to do "
    "instead</experience>, where k is the number of the step to take back, or "
    "<rollback>none</rollback> if no step should be taken back.")


def reflection_prompt(initial_obs, steps: list[Turn], final_obs, solved: bool) -> str:
    """The user message asking the model to reflect on its own trajectory."""
    parts = [f"Level at the start:\n{grid_text(initial_obs)}\n\nYour attempt:\n"]
    for i, s in enumerate(steps):
        word = ACTIONS[s.action] if s.action < len(ACTIONS) else "(invalid answer)"
        parts.append(f"Step {i + 1}: {word}. {s.feedback}\n")
    parts.append(f"\nFinal observation:\n{grid_text(final_obs)}\n")
    parts.append("The level was solved.\n\n" if solved else "The level was not solved.\n\n")
    parts.append(REFLECTION_REQUEST)
    return "".join(parts)


_ROLLBACK = re.compile(r"<rollback>\s*(.*?)\s*</rollback>", re.I | re.S)
_EXPERIENCE = re.compile(r"<experience>\s*(.*?)\s*</experience>", re.I | re.S)


@dataclasses.dataclass(frozen=True)
class ParsedReflection:
    status: str              # "ok" | "none" | "malformed" | "out_of_range"
    tau: int = -1            # 0-based step to roll back to ("ok" only)
    experience: str = ""


def parse_reflection(text: str, *, start: int, num_steps: int) -> ParsedReflection:
    """A reflection answer -> its status and (tau, experience). ``k`` is 1-based in the
    prompt; tau = k - 1 must be one of the rollout's own steps (``start <= tau <
    num_steps``), else ``out_of_range``. Anything else unparsable is ``malformed``: no
    rollback tag, a rollback that is neither a number nor ``none``, a missing or empty
    experience."""
    m = _ROLLBACK.search(text or "")
    if m is None:
        return ParsedReflection("malformed")
    k = m.group(1).strip().lower()
    if k == "none":
        return ParsedReflection("none")
    if not re.fullmatch(r"(step\s*)?\d+", k):
        return ParsedReflection("malformed")
    e = _EXPERIENCE.search(text)
    if e is None or not e.group(1).strip():
        return ParsedReflection("malformed")
    tau = int(re.sub(r"\D", "", k)) - 1
    if not start <= tau < num_steps:
        return ParsedReflection("out_of_range", tau, e.group(1).strip())
    return ParsedReflection("ok", tau, e.group(1).strip())


def reflection_answer(tau: int | None, experience: str = "") -> str:
    """The answer a reflection should be (the warm-up's target): ``tau`` 0-based or None."""
    if tau is None:
        return "<rollback>none</rollback>"
    return f"<rollback>{tau + 1}</rollback><experience>{experience}</experience>"
