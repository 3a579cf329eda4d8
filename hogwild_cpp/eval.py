"""`hogwild eval`: accuracy against token budget (the paper's protocol), with baselines, a plot and a report.

One run per problem and configuration gives every budget. The engine runs to the largest budget
(in parallel decode steps); at each smaller budget `Engine.answer_now` says what the run would
answer if it ended there: a worker's \\boxed{} if one was written, else what the finisher forces
after everyone's text (its block is then dropped and the run goes on unchanged). The largest budget
is the run's own end. A run that stops early (a worker's answer, EOS, a full context) gives its
final answer to every larger budget.

Configurations:
  hogwild-npW      W workers over one shared cache (hogwild-np1: one worker, the same finisher: the
                   baseline of the paper's plots);
  independent-npW  (--baseline independent) W one-worker runs, seeds seed..seed+W-1, no shared cache;
                   at each budget the majority of their answers (no answer does not vote; a tie goes
                   to the answer given first, by the run with the lowest seed).

Answer checking (`same_answer`): both answers are normalised (`normalize`): a \\boxed{} is unwrapped
(the last one, e.g. in a worked solution), GSM8K's "#### 42" is cut to 42, anything up to the last
'=' is dropped, `$`, `\\(`/`\\)`, `\\left`/`\\right`, `\\,`/`\\!`, `\\text{}`/`\\mathrm{}` wrappers and
spaces go, `\\dfrac`/`\\tfrac` become `\\frac`, thousands separators (`1,234`, `1{,}234`) go, and a
trailing `%`/`\\%`, degree sign or unit/word after a number is stripped. If both then read as numbers
(integers, decimals, a/b, \\frac{a}{b}, a sign) they are equal when their values differ by at most
1e-6 relative (so 0.5 = 1/2 = \\frac{1}{2}; 50% = 50, not 0.5); otherwise the normalised texts must be
equal, case-insensitive. No answer is never correct.

Output (OUT): results.jsonl, one line per problem and configuration, appended as soon as the run ends
(a rerun skips what it holds, so Ctrl-C loses only the run in flight); summary.json, summary.csv,
accuracy.png (against budget and against mean wall time), report.html (self-contained).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from .errors import BadInput
from .protocol import extract_boxed

BUILTIN = Path(__file__).resolve().parent.parent / "examples" / "arith.jsonl"
PROBLEM_KEYS = ("problem", "question")
ANSWER_KEYS = ("answer", "final_answer", "solution")


# --- answers ----------------------------------------------------------------------

_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/(?:\d+(?:\.\d*)?|\.\d+))?")


def normalize(text: str | None) -> str | None:
    """The comparable form of an answer (the rule is in the module docstring); None for no answer."""
    if text is None:
        return None
    s = str(text).strip()
    if "\\boxed" in s:
        s = extract_boxed(s) or s
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""), ("\\$", ""),
                 ("$", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""), ("\\!", ""), ("\\,", ""),
                 ("\\;", ""), ("{,}", ","), ("\\%", "%"), ("^\\circ", ""), ("^{\\circ}", ""), ("°", ""),
                 ("−", "-")):
        s = s.replace(a, b)
    for _ in range(3):
        s = _WRAPPERS.sub(r"\1", s)
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    for _ in range(3):
        s = _FRAC.sub(r"(\1)/(\2)", s)
    s = _FRAC_SHORT.sub(r"\1/\2", s)
    s = re.sub(r"\(\s*([-+]?[\d.]+)\s*\)", r"\1", s)  # (3)/(4) -> 3/4
    s = re.sub(r"\s+", "", s) if re.fullmatch(r"[-+]?[\d.\s/()]+%?", s) else s.strip()
    m = _NUMBER.match(s.replace(" ", "")) if s[:1] in "-+.0123456789" else None
    if m:  # a number, then maybe a unit or words: the number
        return m.group(0).lstrip("+")
    return re.sub(r"\s+", " ", s).strip().lower()


def _value(s: str | None) -> Fraction | None:
    if s is None or not _NUMBER.fullmatch(s):
        return None
    try:
        if "/" in s:
            a, b = s.split("/")
            return Fraction(a) / Fraction(b) if Fraction(b) != 0 else None
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def same_answer(answer: str | None, gold: str | None) -> bool:
    """Whether `answer` is `gold` under the normalising rule (module docstring)."""
    a, g = normalize(answer), normalize(gold)
    if a is None or g is None or a == "" or g == "":
        return False
    va, vg = _value(a), _value(g)
    if va is not None and vg is not None:
        return abs(va - vg) <= Fraction(1, 10 ** 6) * max(1, abs(vg))
    return a == g


def vote(answers: list[str | None]) -> str | None:
    """The majority answer (normalised equality); no answer does not vote; a tie goes to the first given."""
    groups: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if same_answer(a, g[0]) or normalize(a) == normalize(g[0]):
                g.append(a)
                break
        else:
            groups.append([a])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equals


# --- data -----------------------------------------------------------------------

@dataclass
class Item:
    id: str
    problem: str
    answer: str


def load_data(data: str | Path, limit: int | None = None) -> list[Item]:
    """Problems from a JSONL file (or `builtin`): a problem field (problem/question) and an answer field
    (answer/final_answer/solution); BadInput in one line for anything else."""
    path = BUILTIN if str(data) == "builtin" else Path(data)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read it ({exc})")
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}:{n}: not JSON ({exc.msg})")
        if not isinstance(rec, dict):
            raise BadInput(f"{path}:{n}: expected an object")
        problem = next((rec[k] for k in PROBLEM_KEYS if isinstance(rec.get(k), str)), None)
        answer = next((rec[k] for k in ANSWER_KEYS if rec.get(k) is not None), None)
        if problem is None or answer is None:
            raise BadInput(f"{path}:{n}: needs a problem ({'/'.join(PROBLEM_KEYS)}) and an answer "
                           f"({'/'.join(ANSWER_KEYS)})")
        items.append(Item(str(rec.get("id", n)), problem, str(answer)))
        if limit and len(items) >= limit:
            break
    if not items:
        raise BadInput(f"{path}: no problems")
    return items


# --- running -----------------------------------------------------------------------

@dataclass
class Config:
    name: str
    kind: str      # hogwild | independent
    workers: int


def configs(workers: list[int], baseline: str | None) -> list[Config]:
    out = [Config(f"hogwild-np{w}", "hogwild", w) for w in workers]
    if baseline == "independent":
        out += [Config(f"independent-np{w}", "independent", w) for w in workers if w > 1]
    return out


def run_once(hw, problem: str, budgets: list[int], tick=None) -> dict:
    """One engine run to max(budgets); the answer at every budget. `hw`: a Hogwild (settings: its own)."""
    from .engine import DoneEvent

    budgets = sorted(budgets)
    at: dict[int, dict] = {}
    extra = [0.0]  # seconds in the mid-run finishers: not the run's own time
    t0 = time.perf_counter()

    def on_step(engine, steps_done):
        if steps_done in budgets[:-1] and steps_done not in at:
            t = time.perf_counter()
            answer, source, by, text = engine.answer_now()
            dt = time.perf_counter() - t
            at[steps_done] = dict(answer=answer, source=source, worker=by, finisher=text,
                                  wall_s=t - t0 - extra[0] + dt,  # the run so far, and this finisher
                                  tokens=sum(w.generated for w in engine.workers))
            extra[0] += dt
        if tick is not None:
            tick(steps_done, sum(w.generated for w in engine.workers), time.perf_counter() - t0 - extra[0])

    run = hw.start(problem)
    run._engine.on_step = on_step
    result = None
    for ev in run.events():
        if isinstance(ev, DoneEvent):
            result = ev.result
    wall = time.perf_counter() - t0 - extra[0]
    tokens = sum(result.generated.values())
    final = dict(answer=result.answer, source=result.answer_source, worker=result.answer_worker,
                 finisher=result.finisher, wall_s=wall, tokens=tokens)
    for b in budgets:
        if b not in at:
            at[b] = dict(final)  # the run's end (or it stopped before this budget)
    return dict(per_budget={str(b): at[b] for b in budgets}, reason=result.reason, steps=result.steps,
                texts=result.texts, transcript=result.transcript, wall_s=wall, tokens=tokens,
                generate_s=result.generate_s - extra[0], prompt_s=result.prompt_s)


def evaluate_item(model, settings, cfg: Config, item: Item, budgets: list[int], tick=None) -> dict:
    """One problem under one configuration: its record for results.jsonl."""
    budgets = sorted(budgets)
    runs = []
    n_runs = cfg.workers if cfg.kind == "independent" else 1
    for i in range(n_runs):
        s = replace(settings, workers=1 if cfg.kind == "independent" else cfg.workers,
                    max_steps=budgets[-1], seed=settings.seed + i,
                    names=None if cfg.kind == "independent" or settings.names is None else settings.names)
        hw = _Loaded(model, s)
        runs.append(run_once(hw, item.problem, budgets, tick))
    per_budget = {}
    for b in budgets:
        got = [r["per_budget"][str(b)] for r in runs]
        if len(runs) == 1:
            entry = dict(got[0])
        else:
            answer = vote([g["answer"] for g in got])
            won = next((g for g in got if answer is not None and g["answer"] == answer), None)
            entry = dict(answer=answer, source=won["source"] if won else None, worker=None, finisher="",
                         votes=[g["answer"] for g in got], vote_sources=[g["source"] for g in got],
                         wall_s=max(g["wall_s"] for g in got), tokens=sum(g["tokens"] for g in got))
        entry["correct"] = same_answer(entry["answer"], item.answer)
        per_budget[str(b)] = entry
    texts = runs[0]["texts"] if len(runs) == 1 else {f"run{i + 1}": r["texts"] for i, r in enumerate(runs)}
    transcript = runs[0]["transcript"] if len(runs) == 1 else ""  # everyone's text as the finisher read it
    return dict(id=item.id, config=cfg.name, kind=cfg.kind, workers=cfg.workers, budgets=budgets,
                problem=item.problem, gold=item.answer, per_budget=per_budget,
                reason=[r["reason"] for r in runs], steps=[r["steps"] for r in runs], texts=texts,
                transcript=transcript,
                wall_s=max(r["wall_s"] for r in runs) if runs else 0.0,
                tokens=sum(r["tokens"] for r in runs), generate_s=sum(r["generate_s"] for r in runs),
                prompt_s=max(r["prompt_s"] for r in runs))


class _Loaded:
    """A Hogwild over an already loaded model (one model load for every configuration)."""

    def __init__(self, model, settings):
        self.model, self.settings = model, settings

    def start(self, problem):
        from . import Run
        from .engine import Engine
        return Run(Engine(self.model, self.settings, spare=True), problem)


# --- results.jsonl ----------------------------------------------------------------

def read_results(path: Path) -> list[dict]:
    """Every whole record (a line cut short by a crash is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "id" in rec and "config" in rec:
            out.append(rec)
    return out


def append_result(path: Path, rec: dict) -> None:
    data = path.read_bytes() if path.exists() else b""
    with open(path, "a", encoding="utf-8") as f:
        if data and not data.endswith(b"\n"):
            f.write("\n")  # after a line cut short
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()


def setup_of(model_path, settings) -> dict:
    """What a record's answers depend on besides the problem and the configuration: a rerun reuses only
    records made with the same (another model, layout, seed, ... in the same --out is run afresh)."""
    s = settings
    protocol = s.protocol if s.protocol is None or isinstance(s.protocol, str) else str(s.protocol)
    return dict(model=Path(model_path).name, layout=s.layout, seed=s.seed, temp=s.temp, top_k=s.top_k,
                top_p=s.top_p, min_p=s.min_p, finisher_tokens=s.finisher_tokens, check_every=s.check_every,
                protocol=str(protocol) if protocol is not None else None, instructions_in=s.instructions_in,
                n_ctx=s.n_ctx, cache=[s.cache_type_k, s.cache_type_v],
                **({"system_prompt": s.system_prompt} if s.system_prompt else {}))  # absent: older records match


def latest(records: list[dict], budgets: list[int] | None = None, setup: dict | None = None
           ) -> dict[tuple[str, str], dict]:
    """The last record of each (problem, configuration) that covers `budgets` and was made with `setup`."""
    out = {}
    for rec in records:
        if setup is not None and rec.get("setup") != setup:
            continue
        if budgets is None or set(budgets) <= set(rec.get("budgets", [])):
            out[(rec["id"], rec["config"])] = rec
    return out


# --- the whole evaluation -------------------------------------------------------------

def run_eval(model_path, data, budgets: list[int], workers: list[int], out: Path, settings,
             baseline: str | None = None, limit: int | None = None, progress: bool = True) -> dict:
    """Evaluate, appending to OUT/results.jsonl; then write the summary, the plot and the report."""
    from .native import Model

    budgets = sorted(set(budgets))
    if not budgets or budgets[0] < 1:
        raise BadInput("budgets must be positive step counts")
    if not workers or min(workers) < 1:
        raise BadInput("worker counts must be 1 or more")
    if baseline not in (None, "independent"):
        raise BadInput(f"unknown baseline {baseline!r} (known: independent)")
    items = load_data(data, limit)
    cfgs = configs(workers, baseline)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    setup = json.loads(json.dumps(setup_of(model_path, settings)))  # as read back from results.jsonl
    done = latest(read_results(results), budgets, setup)
    todo = [(c, it) for it in items for c in cfgs if (it.id, c.name) not in done]
    settings.check()
    if todo:
        model = Model(model_path, n_gpu_layers=settings.n_gpu_layers)
        bar = _bar(len(items) * len(cfgs), len(items) * len(cfgs) - len(todo), progress)
        try:
            for cfg, item in todo:
                last = [0.0]

                def tick(steps, tokens, seconds, cfg=cfg, item=item, last=last):
                    now = time.monotonic()
                    if now - last[0] >= 0.5:
                        last[0] = now
                        toward = next((x for x in budgets if x > steps), budgets[-1])
                        bar.set_postfix_str(f"{cfg.name} #{item.id} budget {toward} (step {steps}/{budgets[-1]}) "
                                            f"{tokens / seconds if seconds > 0 else 0:.1f} tok/s")
                rec = {**evaluate_item(model, settings, cfg, item, budgets, tick), "setup": setup}
                append_result(results, rec)
                done[(item.id, cfg.name)] = rec
                bar.update(1)
        finally:
            bar.close()
            model.close()
    chosen = [done[(it.id, c.name)] for it in items for c in cfgs if (it.id, c.name) in done]
    summary = summarize(chosen, budgets, [c.name for c in cfgs])
    write_outputs(out, summary, chosen)
    return summary


def _bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="run", disable=not enabled, dynamic_ncols=True,
                desc="hogwild eval")


def summarize(records: list[dict], budgets: list[int], names: list[str]) -> dict:
    rows = []
    for name in names:
        recs = [r for r in records if r["config"] == name]
        if not recs:
            continue
        for b in budgets:
            es = [r["per_budget"][str(b)] for r in recs]
            correct = sum(e["correct"] for e in es)
            tokens = sum(e["tokens"] for e in es)
            wall = sum(e["wall_s"] for e in es)
            rows.append(dict(config=name, workers=recs[0]["workers"], budget=b, correct=correct, n=len(es),
                             accuracy=correct / len(es), answered=sum(e["answer"] is not None for e in es),
                             by_worker=sum(e.get("source") == "worker" for e in es),
                             by_finisher=sum(e.get("source") == "finisher" for e in es),
                             mean_wall_s=wall / len(es), tokens_per_s=tokens / wall if wall > 0 else 0.0))
    return dict(budgets=budgets, configs=[n for n in names if any(r["config"] == n for r in records)], rows=rows)


def table(summary: dict) -> str:
    """A markdown table: accuracy per budget per configuration, with counts, wall time and tokens/s."""
    head = "| config | budget | accuracy | correct/n | by worker / finisher | mean wall s | tokens/s |"
    lines = [head, "|" + "---|" * 7]
    for r in summary["rows"]:
        lines.append(f"| {r['config']} | {r['budget']} | {r['accuracy']:.2f} | {r['correct']}/{r['n']} | "
                     f"{r['by_worker']} / {r['by_finisher']} | {r['mean_wall_s']:.2f} | {r['tokens_per_s']:.1f} |")
    return "\n".join(lines)


def write_outputs(out: Path, summary: dict, records: list[dict]) -> None:
    _atomic(out / "summary.json", json.dumps(summary, indent=1))
    buf = io.StringIO()
    fields = ["config", "workers", "budget", "correct", "n", "accuracy", "answered", "by_worker", "by_finisher",
              "mean_wall_s", "tokens_per_s"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in summary["rows"]:
        w.writerow({k: r[k] for k in fields})
    _atomic(out / "summary.csv", buf.getvalue())
    png = plot(summary)
    tmp = out / "accuracy.png.tmp"
    tmp.write_bytes(png)
    tmp.replace(out / "accuracy.png")
    _atomic(out / "report.html", report(summary, records, png))


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def plot(summary: dict) -> bytes:
    """accuracy.png: accuracy against budget and against mean wall time, one line per configuration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in summary["configs"]:
        rows = [r for r in summary["rows"] if r["config"] == name]
        ax1.plot([r["budget"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
        ax2.plot([r["mean_wall_s"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
    ax1.set_xlabel("budget (parallel decode steps)")
    ax2.set_xlabel("mean wall time per problem (s)")
    for ax in (ax1, ax2):
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(summary["budgets"], [str(b) for b in summary["budgets"]])
    ax1.minorticks_off()
    ax1.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def report(summary: dict, records: list[dict], png: bytes) -> str:
    """report.html: the plot (embedded), the table, every problem's transcript, each worker's text in its colour."""
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>hogwild eval</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px}pre{white-space:pre-wrap;margin:2px 0 8px}"
             ".ok{color:#2a2}.bad{color:#c22}details{margin:4px 0}</style></head><body>",
             "<h1>hogwild eval</h1>",
             f"<img alt='accuracy' src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
             "<h2>Accuracy</h2><table><tr><th>config</th><th>budget</th><th>accuracy</th><th>correct/n</th>"
             "<th>by worker / finisher</th><th>mean wall s</th><th>tokens/s</th></tr>"]
    for r in summary["rows"]:
        parts.append(f"<tr><td>{e(r['config'])}</td><td>{r['budget']}</td><td>{r['accuracy']:.2f}</td>"
                     f"<td>{r['correct']}/{r['n']}</td><td>{r['by_worker']} / {r['by_finisher']}</td>"
                     f"<td>{r['mean_wall_s']:.2f}</td><td>{r['tokens_per_s']:.1f}</td></tr>")
    parts.append("</table><h2>Problems</h2>")
    for rec in records:
        answers = ", ".join(
            f"<span class='{'ok' if v['correct'] else 'bad'}'>{b}: {e(str(v['answer']))} ({e(str(v.get('source')))})</span>"
            for b, v in rec["per_budget"].items())
        parts.append(f"<details><summary>#{e(str(rec['id']))} {e(rec['config'])} — gold {e(str(rec['gold']))} — "
                     f"{answers}</summary><p><b>Problem:</b> {e(rec['problem'])}</p>")
        texts = rec["texts"]
        nested = texts and all(isinstance(v, dict) for v in texts.values())
        groups = texts.items() if nested else [("", texts)]
        for run_name, ws in groups:
            if run_name:
                parts.append(f"<h4>{e(run_name)}</h4>")
            for i, (name, text) in enumerate(ws.items()):
                c = _COLOURS[i % len(_COLOURS)]
                parts.append(f"<div style='color:{c}'><b>{e(name)}</b><pre>{e(text)}</pre></div>")
        if rec.get("transcript"):
            parts.append("<details><summary>the whole transcript at the largest budget (prompt, everyone's text, "
                         f"the finisher)</summary><pre>{e(rec['transcript'])}</pre></details>")
        fins = [(b, v["finisher"]) for b, v in rec["per_budget"].items() if v.get("finisher")]
        for b, text in fins:
            parts.append(f"<div style='color:#555'><b>finisher at {b}</b><pre>{e(text)}</pre></div>")
        parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)
