"""The collaboration text (paper §3.3, App. C; our own wording): prompts, headers, markers, step
labels and openers, the self-check, the finisher, the thinking section of reasoning models, and the
rules that read the workers' text (where a step ends, what the answer is).

Every text comes from a protocol file: `protocol.toml` next to this module is the default, and
`load(FILE)` merges a user's TOML or JSON file over it (`Protocol`). Nothing here imports llama.cpp.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInput
from .layouts import Layout

DEFAULT_FILE = Path(__file__).with_name("protocol.toml")

NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi",
         "Ivan", "Judy", "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil"]


def default_names(n: int) -> list[str]:
    return [NAMES[i] if i < len(NAMES) else f"Worker{i + 1}" for i in range(n)]


# --- placeholders ---------------------------------------------------------------

_TEAM = {"n", "names", "first", "second"}
_LAYOUT_TEXTS = {"history_header", "others_header", "own_header", "own_workspace_header", "marker"}
_RULES = _TEAM | _LAYOUT_TEXTS | {"step_example"}
PLACEHOLDERS: dict[str, set[str]] = {
    "steps.prefix": {"name", "step"},
    "prompt.team": _RULES | {"layout"},
    "prompt.solo": _RULES,
    "prompt.layouts.combined": _RULES,
    "prompt.layouts.stepwise": _RULES,
    "prompt.layouts.contiguous": _RULES,
    "prompt.user_with_instructions": {"instructions", "problem"},
    "prompt.user": {"problem"},
    "prompt.plain": {"instructions", "problem"},
    "prompt.openers": _TEAM | {"name"},
    "prompt.solo_opener": {"name"},
    "check.question": {"name"},
    "check.solo_question": {"name"},
    "finisher.text": {"close"},
}
# a placeholder is {word} not directly after a letter, '\', '^' or '_': \boxed{x} and x^{n} stay text
_PLACEHOLDER = re.compile(r"(?<![A-Za-z\\^_])\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill(text: str, **values) -> str:
    """`text` with its placeholders replaced (the ones not given stay as they are)."""
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)


# --- the protocol file ----------------------------------------------------------

def _flatten(table: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _nest(flat: dict[str, object]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        *tables, last = key.split(".")
        d = out
        for t in tables:
            d = d.setdefault(t, {})
        d[last] = v
    return out


def _read(path: Path) -> dict:
    """A TOML or JSON file as nested tables; BadInput (one line) if it cannot be read or parsed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"protocol {path}: no such file")
    except IsADirectoryError:
        raise BadInput(f"protocol {path}: is a directory")
    except OSError as exc:
        raise BadInput(f"protocol {path}: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"protocol {path}: not UTF-8 text")
    as_json = path.suffix.lower() == ".json" or (path.suffix.lower() != ".toml" and text.lstrip().startswith("{"))
    try:
        data = json.loads(text) if as_json else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"protocol {path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})")
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"protocol {path}: not valid TOML ({str(exc).splitlines()[0]})")
    if not isinstance(data, dict):
        raise BadInput(f"protocol {path}: expected tables of settings, got {type(data).__name__}")
    return data


def _type_name(v) -> str:
    return {str: "a string", int: "an integer", list: "a list of strings"}[type(v)]


CHOICES = {"prompt.instructions_in": ("user", "system"), "thinking.mode": ("auto", "on", "off")}
LIMITS = {"check.every": (0, 1 << 30), "finisher.tokens": (0, 4096)}


def _check_value(where: str, key: str, value, default) -> None:
    if type(default) is int:
        if type(value) is not int:  # bool is not an int here
            raise BadInput(f"{where}: {key} must be an integer, got {value!r}")
        lo, hi = LIMITS[key]
        if not lo <= value <= hi:
            raise BadInput(f"{where}: {key} must be between {lo} and {hi}, got {value}")
        return
    if type(default) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadInput(f"{where}: {key} must be a list of strings")
        texts = value
    else:
        if not isinstance(value, str):
            raise BadInput(f"{where}: {key} must be {_type_name(default)}, got {value!r}")
        texts = [value]
    if key in CHOICES and value not in CHOICES[key]:
        raise BadInput(f"{where}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    allowed = PLACEHOLDERS.get(key, set())
    for t in texts:
        for m in _PLACEHOLDER.finditer(t):
            if m.group(1) not in allowed:
                known = ", ".join("{" + p + "}" for p in sorted(allowed)) or "none"
                raise BadInput(f"{where}: {key} has an unknown placeholder {{{m.group(1)}}} (known here: {known})")


@dataclass(frozen=True)
class Protocol:
    """Every text the engine writes, and the numbers that go with them (keys as in protocol.toml)."""

    values: dict[str, object]          # dotted key -> value, every key of the default file
    source: str = field(default="default", compare=False)  # where it came from, for messages

    def __getitem__(self, key: str):
        return self.values[key]

    def to_dict(self) -> dict:
        """Nested tables, as in the file: `json.dumps` of it loads back to an equal Protocol."""
        return _nest(self.values)

    # --- what the engine writes ---

    def step_prefix(self, name: str, step: int) -> str:
        return fill(self["steps.prefix"], name=name, step=step)

    def opener(self, names: list[str], index: int) -> str:
        if len(names) == 1:
            return fill(self["prompt.solo_opener"], name=names[0])
        openers = self["prompt.openers"]
        if not openers:
            return ""
        return fill(openers[min(index, len(openers) - 1)], name=names[index], **_team(names))

    def check_question(self, names: list[str], name: str) -> str:
        return fill(self["check.question" if len(names) > 1 else "check.solo_question"], name=name)

    def instructions(self, names: list[str], layout: Layout) -> str:
        """The rules every worker reads (one text for all of them: a worker knows itself by its labels)."""
        values = {**_team(names), **self._layout_texts(), "step_example": self.step_prefix(names[0], 1).strip()}
        if len(names) == 1:
            return fill(self["prompt.solo"], **values).strip()
        values["layout"] = fill(self[f"prompt.layouts.{layout.name}"], **values).strip()
        return fill(self["prompt.team"], **values).strip()

    def _layout_texts(self) -> dict[str, str]:
        return {k: self[f"layout.{k}"].strip().lstrip("#").strip() for k in _LAYOUT_TEXTS}

    def finisher_text(self, thinking: Thinking | None) -> str:
        return fill(self["finisher.text"], close=thinking.close if thinking else self["finisher.separator"])

    def example_answers(self, names: list[str], layout: Layout) -> set[str]:
        """What a \\boxed{} in our own texts holds: an answer equal to one of these was copied, not found."""
        texts = [self.instructions(names, layout), self.finisher_text(None) + "}",
                 *(self.opener(names, i) for i in range(len(names)))]
        return {a for t in texts for a in boxed_all(t)}


def _team(names: list[str]) -> dict[str, object]:
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return {"n": len(names), "names": listed, "first": names[0], "second": names[1] if len(names) > 1 else names[0]}


_DEFAULT: dict[str, object] | None = None


def _defaults() -> dict[str, object]:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = _flatten(tomllib.loads(DEFAULT_FILE.read_text(encoding="utf-8")))
    return _DEFAULT


def default() -> Protocol:
    return Protocol(dict(_defaults()))


def load(path) -> Protocol:
    """`path`'s settings over the defaults; BadInput, in one line, for anything that cannot work."""
    path = Path(path)
    where = f"protocol {path}"
    given = _flatten(_read(path))
    defaults = _defaults()
    for key, value in given.items():
        if key not in defaults:
            close = [k for k in defaults if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BadInput(f"{where}: unknown key {key!r}{hint}")
        _check_value(where, key, value, defaults[key])
    return Protocol({**defaults, **given}, source=str(path))


def resolve(protocol) -> Protocol:
    """A Protocol from what Settings.protocol holds: None (the default), a path, or a Protocol."""
    if protocol is None:
        return default()
    if isinstance(protocol, Protocol):
        return protocol
    return load(protocol)


# --- the prompt -----------------------------------------------------------------

@dataclass(frozen=True)
class Thinking:
    """A reasoning model's thinking section: the workers write inside it; the finisher closes it."""
    open: str
    close: str


_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), s)


def _literals(template: str) -> list[str]:
    return [_unescape(a if a is not None else b) for a, b in _LITERAL.findall(template)]


def thinking_section(template: str | None, protocol: Protocol) -> Thinking | None:
    """How the chat template opens and closes its thinking section, or None where it has none.

    A template has one when it writes both <think> and </think> (Qwen3, DeepSeek-R1 distills, QwQ).
    The opening is the one its generation prompt writes (QwQ, newer R1 distills: "<think>\\n"); a
    template that leaves the opening to the model (Qwen3) gets protocol thinking.open. The closing is
    the string the template writes around </think> when it shows past reasoning (Qwen3:
    "\\n</think>\\n\\n"); else protocol thinking.close.
    """
    mode = protocol["thinking.mode"]
    if mode == "off":
        return None
    has = bool(template) and "<think>" in template and "</think>" in template
    if mode == "auto" and not has:
        return None
    opening, closing = protocol["thinking.open"], protocol["thinking.close"]
    if has:
        generation = template[template.rfind("add_generation_prompt"):] if "add_generation_prompt" in template else ""
        for lit in _literals(generation):
            if "<think>" in lit and "</think>" not in lit:  # not an empty section that turns thinking off
                opening = lit[lit.index("<think>"):]
                break
        closes = [lit for lit in _literals(template) if "</think>" in lit and "<think>" not in lit]
        shaped = [m.group(0) for lit in closes if (m := re.search(r"\s*</think>\s*", lit)) and m.group(0) != "</think>"]
        if shaped:
            closing = max(shaped, key=len)
    return Thinking(opening, closing)


def chat_prompt(model, names: list[str], layout: Layout, problem: str, protocol: Protocol | None = None,
                instructions_in: str | None = None, thinking: Thinking | None = None,
                system: str | None = None) -> str:
    """The prompt text, through the model's chat template when llama.cpp knows it: the rules in the
    user message (before the problem) or in the system message; a thinking section opened last.
    `system` (the user's -sys) opens the system message, before the rules when they go there too;
    without a chat template it opens the text."""
    p = protocol or default()
    rules, problem = p.instructions(names, layout), problem.strip()
    where = instructions_in or p["prompt.instructions_in"]
    system = system.strip() if system and system.strip() else None
    text = None
    if model.chat_template():
        if where == "user":
            messages = [("user", fill(p["prompt.user_with_instructions"], instructions=rules, problem=problem))]
            system_text = system
        else:
            messages = [("user", fill(p["prompt.user"], problem=problem))]
            system_text = rules if system is None else f"{system}\n\n{rules}"
        text = model.apply_chat_template(([("system", system_text)] if system_text else []) + messages)
    if text is None:
        text = fill(p["prompt.plain"], instructions=rules, problem=problem)
        text = text if system is None else f"{system}\n\n{text}"
    if thinking is not None and not text.endswith(thinking.open):
        text += thinking.open
    return text


# --- reading the workers' text ----------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?)\]。！？…．｡]\s*$")
_TILDE_FENCE = re.compile(r"^\s*~~~", re.MULTILINE)


def step_finished(text: str) -> bool:
    """A step ends at a paragraph break after a sentence end (ASCII or not), not after ',' or ':',
    and never inside a ``` or ~~~ code block, a $$ display or an unclosed \\[."""
    if not text.endswith("\n\n"):
        return False
    if text.count("```") % 2 or len(_TILDE_FENCE.findall(text)) % 2 or text.count("$$") % 2:
        return False
    if text.count("\\[") > text.count("\\]"):
        return False
    body = text.rstrip()
    return bool(body) and bool(_SENTENCE_END.search(body))


_BOXED = re.compile(r"\\boxed\{")


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete \\boxed{...}, nested braces included."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((m.start(), i, text[m.end():i - 1].strip()))
    return out


def boxed_all(text: str) -> list[str]:
    return [c for _, _, c in _boxed_spans(text)]


def extract_boxed(text: str, exclude: set[str] | frozenset = frozenset(), ending_after: int = 0) -> str | None:
    """The content of the last complete \\boxed{...} (nested braces allowed) that ends after
    `ending_after`; an empty box, or one holding a text of `exclude` (our own examples), is no answer."""
    for _, end, content in reversed(_boxed_spans(text)):
        if end > ending_after and content and content not in exclude:
            return content
    return None
