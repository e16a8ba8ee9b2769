"""What a llama-server binary accepts, read from its own ``--help``.

llama.cpp trees disagree on flag names and values (the AtomicBot fork's
``--spec-type mtp`` vs upstream's ``draft-mtp``, turbo KV types only in the fork,
flags that upstream keeps in --help only to say they were removed). Rendering
from the binary's help means profiles stay semantic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"^-{1,2}[A-Za-z0-9][\w.-]*$")
DESC_COL = 40


@dataclass
class Option:
    names: tuple[str, ...]
    arg: str = ""
    description: str = ""

    @property
    def removed(self) -> bool:
        return "has been removed" in self.description

    @property
    def allowed(self) -> list[str] | None:
        m = re.search(r"allowed values:\s*(.*)", self.description, re.S)
        if m:
            text = ""
            for line in m.group(1).split("\n"):   # the list may wrap onto continuation lines
                text += " " + line.strip()
                if not line.rstrip().endswith(","):
                    break
            return [v.strip() for v in text.split(",") if v.strip()]
        arg = self.arg.strip()
        m = re.fullmatch(r"[{\[]([\w|,.-]+)[}\]]", arg)
        if m:
            return [v for v in re.split(r"[|,]", m.group(1)) if v]
        if "," in arg and " " not in arg:
            return [v for v in arg.split(",") if v]
        return None


@dataclass
class Help:
    options: list[Option] = field(default_factory=list)
    by_name: dict[str, Option] = field(default_factory=dict)

    def get(self, name: str) -> Option | None:
        opt = self.by_name.get(name)
        if opt is None or opt.removed:
            return None
        return opt

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def first(self, candidates: list[str]) -> str | None:
        """The first candidate spelling this binary accepts."""
        return next((c for c in candidates if self.has(c)), None)

    def allowed(self, name: str) -> list[str] | None:
        opt = self.get(name)
        return opt.allowed if opt else None


def parse_help(text: str) -> Help:
    help_ = Help()
    current: Option | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("-----"):
            current = None
            continue
        if line.startswith("-"):
            if len(line) > DESC_COL and line[DESC_COL - 2:DESC_COL] == "  ":
                spec, desc = line[:DESC_COL], line[DESC_COL:].strip()
            else:
                spec, desc = line, ""
            tokens = [t for t in re.split(r",?\s+", spec.strip()) if t]
            names = []
            while tokens and _NAME.match(tokens[0].rstrip(",")):
                names.append(tokens.pop(0).rstrip(","))
            if not names:
                current = None
                continue
            current = Option(tuple(names), " ".join(tokens), desc)
            help_.options.append(current)
            for n in names:
                help_.by_name.setdefault(n, current)
        elif current is not None:
            current.description += ("\n" if current.description else "") + line.strip()
    return help_
