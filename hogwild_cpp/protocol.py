"""The collaboration text (paper §3.3, App. C; our own wording): prompts, step prefixes, step ends."""

from __future__ import annotations

import re

from .layouts import Layout

NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi",
         "Ivan", "Judy", "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil"]

# combined layout: the header of the unfinished steps, then each unfinished step after a blank line
# of its own (a separate block, so that the history shows the step without it); yours comes last
OTHERS_HEADER = "\n\n[Steps being written right now, unfinished; yours is last]"
STEP_SEPARATOR = "\n\n"
REDUNDANCY_CHECK = "Quick check: am I doing work someone else already did? (yes/no): "
FINISHER = ("\n\nTime is up: I have to give an answer right now, using everything written above. "
            "The final answer is \\boxed{")


def default_names(n: int) -> list[str]:
    return [NAMES[i] if i < len(NAMES) else f"Worker{i + 1}" for i in range(n)]


def system_prompt(names: list[str], layout: Layout) -> str:
    n = len(names)
    if n == 1:
        team = f"You are {names[0]}, solving the problem below step by step."
    else:
        team = (f"You are one of {n} assistants ({', '.join(names)}) solving the problem below together, "
                "at the same time, in one shared workspace. Every token any of you writes appears to the "
                "others immediately.")
    where = layout.prompt_text
    how = ("Write in short steps that begin with your name and a step number, like "
           f"\"**{names[0]} [1]:**\", and end a step with a blank line. Before you start something, look at "
           "what the others are doing: split the work, check each other's results, and change plans when "
           "someone is ahead of you. Do not repeat work another assistant has done.") if n > 1 else \
          (f"Write in short steps that begin with \"**{names[0]} [k]:**\" and end with a blank line.")
    answer = "When the answer is certain, write it once as \\boxed{answer} at the end of a step."
    return " ".join([team, where if n > 1 else "", how, answer]).replace("  ", " ").strip()


def step_prefix(name: str, k: int) -> str:
    return f"**{name} [{k}]:** "


def chat_prompt(model, names: list[str], layout: Layout, problem: str) -> str:
    """The prompt text, through the model's chat template when it has one."""
    system = system_prompt(names, layout)
    template = model.chat_template()
    if template:
        text = model.apply_chat_template([("system", system), ("user", problem.strip())])
        if text is not None:
            return text
    return f"{system}\n\nProblem: {problem.strip()}\n\nSolution:\n"


_SENTENCE_END = re.compile(r"[.!?)\]]\s*$")


def step_finished(text: str) -> bool:
    """A step ends at a paragraph break after a sentence end, outside code, not after ',' or ':'."""
    if not text.endswith("\n\n") or text.count("```") % 2:
        return False
    body = text.rstrip()
    return bool(body) and bool(_SENTENCE_END.search(body))


_BOXED = re.compile(r"\\boxed\{")


def extract_boxed(text: str) -> str | None:
    """The content of the last complete \\boxed{...} (nested braces allowed)."""
    answer = None
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            answer = text[m.end():i - 1].strip()
    return answer
