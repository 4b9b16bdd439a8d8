"""`make docs-check`: fail when the README or a docs page names something that does not exist.

    .venv/bin/python docs/check.py                 # README.md, docs/*.md, */README.md
    .venv/bin/python docs/check.py --pages a.md    # only these pages

Checked on every page:

- **links** ``[text](target)``: a relative target must exist (relative to the page); an
  ``#anchor`` into a Markdown page must be one of its headings (GitHub's slugs);
- **flags** ``--name``: after ``jobs/X.py`` in a command (code block or inline code), a flag
  of that job, read from its pydantic config's parser (``--help`` lists the same); after
  another repository script (``dashboards/build.py``, ``benchmarks/*.py``), one of its
  ``add_argument`` flags; inline code made of flags only, a flag of the page's job
  (``docs/train.md`` -> ``jobs/train.py``; any job on other pages). Flags of other tools
  (``ray``, ``kubectl``, ...) are theirs and not checked. ``--x.*`` means "some flag under x";
- **paths** in code (inline or blocks) that start with a top-level folder of the repository
  (``platform/``, ``jobs/``, ...) or with ``embedforge/`` (the package folder) must exist
  (globs must match, ``{a,b}`` expands);
  ``embedforge.a.b`` must be a module, or a name defined at the top of one;
- **layout trees** (a code block starting with ``platform/embedforge/``): every entry must
  exist where its indentation puts it;
- **figures** in a table row (a number with two or more decimals) under a heading whose
  section cites ``benchmarks/results-*.json`` must be a value of one of those files, rounded
  to the digits shown (or that value in points, ×100): a README that keeps old figures after
  the results file moved fails. Every results file must name the ``commit`` it was measured on.

A job's flags come from importing its config class (light: no torch or Ray), so a renamed
field breaks the docs that still name the old flag. Lives outside the library: it checks the
repository, not something users install.
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib
import itertools
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from functools import cache, lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_DIRS = ("platform", "jobs", "tests", "benchmarks", "dashboards", "docs", "cluster")
STAGE_PAGES = {"prepare", "synthesize", "mine", "train", "merge", "evaluate", "serve", "pipeline"}
# flags of other tools that the docs name in inline code on their own (in a command line,
# everything after `ray`, `docker`, ... is that tool's and never checked)
EXTERNAL_FLAGS = {
    "--build-arg": "docker build",
    "--metrics-export-port": "ray start",
}

_FENCE = re.compile(r"^([ \t]*)```([^\n`]*)\n(.*?)^\1```[ \t]*$", re.M | re.S)
_INLINE = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_FLAG = re.compile(r"^--[A-Za-z][\w.\-*]*")
_PATH = re.compile(rf"(?<![\w./~-])((?:{'|'.join(TOP_DIRS)}|embedforge)/[\w./*{{}},\-]*)")
_MODULE = re.compile(r"(?<![\w./])embedforge(?:\.\w+)+")
_RESULTS = re.compile(r"(?<![\w.-])(?:benchmarks/)?(results-[\w.-]+\.json)")
_FIGURE = re.compile(r"(?<![\w.])[-+−]?\d+\.\d{2,}(?![\w.])")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
_SCRIPT = re.compile(r"(?:^|/)((?:jobs|benchmarks|dashboards|docs)/[\w\-]+\.py)$")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("pages", "links", "flags", "paths", "modules", "figures"), 0))

    def bad(self, page: Path, line: int, message: str) -> None:
        self.problems.append(f"{_rel(page)}:{line}: {message}")


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- what exists

@cache
def job_flags(script: str) -> frozenset[str]:
    """Flags of ``jobs/X.py``: the parser built from the config class it passes to
    ``parse_config`` (found in its source, imported from the library)."""
    tree = ast.parse((ROOT / script).read_text(encoding="utf-8"))
    imported = {a.asname or a.name: node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module for a in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_config" \
                and node.args and isinstance(node.args[0], ast.Name):
            name = node.args[0].id
            sys.path.insert(0, str(ROOT / "platform"))
            from embedforge.config import build_parser

            cls = getattr(importlib.import_module(imported[name]), name)
            return frozenset(s for a in build_parser(cls)._actions for s in a.option_strings)
    return script_flags(script)


@cache
def script_flags(script: str) -> frozenset[str]:
    """Flags a script declares with ``add_argument("--x", ...)`` (plus ``--help``), in its own
    source or in the functions it imports from a script beside it (shared argument helpers)."""
    path = ROOT / script
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = list(ast.walk(tree))
    for imp in [n for n in nodes if isinstance(n, ast.ImportFrom) and n.module and n.level == 0]:
        sibling = path.parent / f"{imp.module}.py"
        if sibling.exists():
            helpers = {a.name for a in imp.names}
            nodes += [n for f in ast.parse(sibling.read_text(encoding="utf-8")).body
                      if isinstance(f, ast.FunctionDef) and f.name in helpers for n in ast.walk(f)]
    flags = {"--help", "-h"}
    for node in nodes:
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags.update(a.value for a in node.args if isinstance(a, ast.Constant)
                         and isinstance(a.value, str) and a.value.startswith("-"))
    return frozenset(flags)


def flags_of(script: str) -> frozenset[str]:
    return job_flags(script) if script.startswith("jobs/") else script_flags(script)


@cache
def all_job_flags() -> frozenset[str]:
    return frozenset().union(*(job_flags(f"jobs/{p.name}")
                               for p in sorted((ROOT / "jobs").glob("*.py"))))


def flag_ok(flag: str, known: frozenset[str]) -> bool:
    flag = flag.split("=", 1)[0]
    if flag.endswith(".*"):
        return any(k.startswith(flag[:-1]) for k in known)
    return flag in known


def _expand(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [x for alt in m.group(1).split(",")
            for x in _expand(path[:m.start()] + alt + path[m.end():])]


def path_exists(path: str) -> bool:
    """A repository path (``embedforge/...`` is the package folder under ``platform/``)."""
    path = path.rstrip(".,;")
    if path.startswith("embedforge/"):
        path = "platform/" + path
    for p in _expand(path):
        hits = glob.glob(str(ROOT / p)) if any(c in p for c in "*?[") else \
            [p] if (ROOT / p).exists() else []
        if not hits:
            return False
    return True


@cache
def _top_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


@lru_cache(maxsize=1)
def code_strings() -> frozenset[str]:
    """``"embedforge.x"`` string literals of the library: names the code itself uses, such
    as MLflow tags (``embedforge.gate``), are not module references."""
    out: set[str] = set()
    for path in (ROOT / "platform" / "embedforge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"embedforge(\.\w+)+", node.value):
                out.add(node.value)
    return frozenset(out)


def module_exists(dotted: str) -> bool:
    """``embedforge.a.b.c``: packages and modules down the path, then one name defined at the
    top of the last module (``embedforge.data.classification.draw_positive_and_negatives``)."""
    if dotted in code_strings():
        return True
    node = ROOT / "platform" / "embedforge"
    for part in dotted.split(".")[1:]:
        if node.is_dir():
            if (node / part).is_dir():
                node = node / part
            elif (node / f"{part}.py").is_file():
                node = node / f"{part}.py"
            else:
                init = node / "__init__.py"
                return init.is_file() and part in _top_names(init)
        else:
            return part in _top_names(node)
    return True


@cache
def slugs(page: Path) -> frozenset[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return frozenset(re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
                     for h in _HEADING.findall(text))


# ----------------------------------------------------------------------------- the checks

def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _check_command(tokens: list[str], page: Path, line: int, default: frozenset[str],
                   report: Report) -> None:
    """Flags after a repository script are that script's; a span of flags only is the
    page's job's; a command line without a repository script is another tool's (``ray``,
    ``kubectl``, ``curl``, ...) and its flags are not ours to check."""
    scripts = [i for i, tok in enumerate(tokens)
               if (m := _SCRIPT.search(tok)) and (ROOT / m.group(1)).is_file()]
    if not scripts and tokens and not tokens[0].startswith("-"):
        return
    script: str | None = None
    for i, tok in enumerate(tokens):
        if i in scripts:
            script = _SCRIPT.search(tok).group(1)  # type: ignore[union-attr]
            continue
        if scripts and script is None:
            continue  # the tool that runs the script: `ray job submit --working-dir . --`
        if not _FLAG.match(tok):
            continue
        known = flags_of(script) if script else default | frozenset(EXTERNAL_FLAGS)
        report.counts["flags"] += 1
        if not flag_ok(tok, known):
            where = script or ("the page's job" if default is not all_job_flags() else "any job")
            report.bad(page, line, f"flag {tok.split('=', 1)[0]} is not a flag of {where}")


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, posix=True)
    except ValueError:
        return text.split()


def _check_code(code: str, page: Path, line: int, report: Report) -> None:
    for m in _PATH.finditer(code):
        report.counts["paths"] += 1
        if not path_exists(m.group(1)):
            report.bad(page, line + code.count("\n", 0, m.start()),
                       f"path {m.group(1).rstrip('.,;')} does not exist")
    for m in _MODULE.finditer(code):
        report.counts["modules"] += 1
        if not module_exists(m.group(0)):
            report.bad(page, line + code.count("\n", 0, m.start()),
                       f"{m.group(0)} is neither a module nor a name in one")


def _check_block(lang: str, body: str, page: Path, line: int, default: frozenset[str],
                 report: Report) -> None:
    _check_code(body, page, line, report)
    if body.lstrip().startswith("platform/embedforge/"):
        _check_layout(body, page, line, report)
        return
    if lang not in ("", "bash", "sh", "shell", "console", "text"):
        return
    logical, start = "", 0
    for i, raw in enumerate(body.split("\n")):
        if not logical:
            start = i
        code, _, comment = raw.partition(" #") if not raw.lstrip().startswith("#") else \
            ("", "", raw.lstrip()[1:])
        if comment:
            _check_command([t for t in comment.split() if t.startswith("--")], page,
                           line + i, default, report)
        if code.rstrip().endswith("\\"):
            logical += code.rstrip()[:-1] + " "
            continue
        logical += code
        if logical.strip():
            _check_command(_tokens(logical), page, line + start, default, report)
        logical = ""


def _check_layout(body: str, page: Path, line: int, report: Report) -> None:
    """A layout tree: unindented entries live at the root, indented ones under the last
    unindented folder above them."""
    parent = ""
    for i, raw in enumerate(body.split("\n")):
        m = re.match(r"^(\s*)(\S+)", raw)
        if not m or raw.strip().startswith("#"):
            continue
        entry = m.group(2)
        path = entry if not m.group(1) else parent + entry
        if not m.group(1) and entry.endswith("/"):
            parent = entry
        report.counts["paths"] += 1
        if not path_exists(path):
            report.bad(page, line + i, f"layout: {path} does not exist")


@cache
def results_values(name: str) -> tuple[Decimal, ...] | None:
    """Every number in ``benchmarks/NAME`` (None when the file does not exist)."""
    path = ROOT / "benchmarks" / name
    if not path.exists():
        return None
    out: list[Decimal] = []

    def walk(o: object) -> None:
        if isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        elif isinstance(o, int | float) and not isinstance(o, bool):
            out.append(Decimal(repr(o)))

    walk(json.loads(path.read_text(encoding="utf-8")))
    return tuple(out)


def figure_in(shown: str, values: tuple[Decimal, ...]) -> bool:
    """Whether the figure ``shown`` (``0.7842``, ``+3.82``, ``−0.23``) is one of ``values``
    rounded to its digits, as is, in points (×100) or in seconds from milliseconds (×0.001).
    Rounded as a person (half up), as ``Decimal`` (half even) or as Python's ``round`` of the
    float (``round(0.72395, 4)`` is 0.7239) would round it: the check is for a figure that
    moved, not for how it was rounded."""
    x = Decimal(shown.replace("−", "-").lstrip("+"))
    step = Decimal(1).scaleb(x.as_tuple().exponent)
    digits = -x.as_tuple().exponent
    return any((v * k).quantize(step, rounding=r) == x or round(float(v * k), digits) == float(x)
               for v in values for k in (1, 100, Decimal("0.001"))
               for r in (ROUND_HALF_UP, ROUND_HALF_EVEN))


def _check_figures(prose: str, page: Path, report: Report, cited_text: str) -> None:
    """Table figures of each section against the results files that section cites."""
    starts = [0, *(m.start() for m in _HEADING.finditer(prose)), len(prose)]
    cited_starts = [0, *(m.start() for m in _HEADING.finditer(cited_text)), len(cited_text)]
    for (a, b), (ca, cb) in zip(itertools.pairwise(starts), itertools.pairwise(cited_starts),
                                strict=True):
        names = sorted(set(_RESULTS.findall(cited_text[ca:cb])))
        if not names:
            continue
        values = tuple(v for n in names for v in (results_values(n) or ()))
        for m in re.finditer(r"^\|.*$", prose[a:b], re.M):
            for f in _FIGURE.finditer(m.group(0)):
                report.counts["figures"] += 1
                if not figure_in(f.group(0), values):
                    report.bad(page, _line(prose, a + m.start() + f.start()),
                               f"figure {f.group(0)} is in none of {', '.join(names)}")


def check_results_files(report: Report) -> None:
    """Every ``benchmarks/results-*.json`` names the commit it was measured on: at its top, or
    in each of its top-level entries when it holds runs of several commits (a before/after)."""
    def named(d: object) -> bool:
        return isinstance(d, dict) and isinstance(d.get("commit"), str) \
            and bool(_COMMIT.match(d["commit"]))

    for path in sorted((ROOT / "benchmarks").glob("results-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not (named(data) or (isinstance(data, dict) and data
                                and all(named(v) for v in data.values()))):
            report.bad(path, 1, "names no commit it was measured on (a \"commit\" key, hex)")


def check_page(page: Path, report: Report) -> None:
    text = page.read_text(encoding="utf-8")
    report.counts["pages"] += 1
    stage = page.stem if page.parent.name == "docs" and page.stem in STAGE_PAGES else None
    default = job_flags(f"jobs/{stage}.py") if stage else all_job_flags()
    for m in _FENCE.finditer(text):
        _check_block(m.group(2).strip(), m.group(3), page, _line(text, m.start(3)), default,
                     report)
    prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for m in _INLINE.finditer(prose):
        code, line = m.group(2), _line(prose, m.start())
        _check_code(code, page, line, report)
        _check_command(_tokens(code), page, line, default, report)
    for m in _LINK.finditer(re.sub(r"`[^`]*`", lambda s: " " * len(s.group(0)), prose)):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # http:, https:, mailto:
        report.counts["links"] += 1
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        line = _line(prose, m.start())
        if not dest.exists():
            report.bad(page, line, f"link to {target}: {_rel(dest)} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
            report.bad(page, line, f"link to {target}: no heading #{anchor} in {_rel(dest)}")
    for name in sorted(set(_RESULTS.findall(text))):
        if results_values(name) is None:
            report.bad(page, _line(text, text.index(name)), f"benchmarks/{name} does not exist")
    # headings are found in the prose (a fenced "# comment" is no heading), and the files a
    # section cites anywhere in it, code blocks included (the command's --out names its file)
    blanked = _FENCE.sub(lambda m: re.sub(r"(?m)^#", " ", m.group(0)), text)
    _check_figures(prose, page, report, blanked)


def default_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md")),
            # not hidden folders: tools write their own READMEs there (.pytest_cache/README.md
            # appears after the first test run, and its flags are pytest's)
            *sorted(p for p in ROOT.glob("*/README.md")
                    if p.parent.name != "docs" and not p.parent.name.startswith("."))]


def check(pages: list[Path]) -> Report:
    report = Report()
    for page in pages:
        check_page(page, report)
    check_results_files(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", nargs="+", type=Path, help="check only these Markdown files")
    args = parser.parse_args(argv)
    report = check(args.pages or default_pages())
    for problem in report.problems:
        print(problem, file=sys.stderr)
    c = report.counts
    summary = (f"{c['pages']} pages, {c['links']} links, {c['flags']} flags, {c['paths']} paths, "
               f"{c['modules']} module names, {c['figures']} figures")
    if report.problems:
        print(f"docs-check: FAILED, {len(report.problems)} problem(s) in {summary}",
              file=sys.stderr)
        return 1
    print(f"docs-check: ok ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
