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
_ENV = re.compile(r"\(env:\s*([A-Z][A-Z0-9_]*)\)")
DESC_COL = 40

# The environment llama-server reads on its own (llama.cpp's common/arg.cpp): every LLAMA_ARG_* flag
# variable, the API key, and the names its --help lists with "(env: NAME)". Used when no --help is at
# hand (profile show); with one, the binary's own list is added (Help.env_names).
SERVER_ENV_PREFIXES = ("LLAMA_ARG_",)
SERVER_ENV_NAMES = frozenset({
    "LLAMA_API_KEY", "HF_TOKEN", "LLAMA_OFFLINE", "LLAMA_CHAT_TEMPLATE_KWARGS", "MTMD_BACKEND_DEVICE",
    "LLAMA_LOG_FILE", "LLAMA_LOG_COLORS", "LLAMA_LOG_VERBOSITY", "LLAMA_LOG_PREFIX", "LLAMA_LOG_TIMESTAMPS",
})

# Flags made to be given more than once (llama.cpp appends each occurrence), whatever --help says.
REPEATABLE = frozenset({
    "--override-kv", "--lora", "--lora-scaled", "--control-vector", "--control-vector-scaled",
    "--override-tensor", "-ot", "--override-tensor-draft", "-otd",
})
_REPEAT_WORDS = re.compile(r"can be (?:repeated|given|specified|used) (?:multiple|several|more than once)|repeatable|"
                           r"may be repeated|multiple times", re.I)


@dataclass
class Option:
    names: tuple[str, ...]
    arg: str = ""
    description: str = ""

    @property
    def removed(self) -> bool:
        return "has been removed" in self.description

    @property
    def env(self) -> list[str]:
        """Environment variables llama-server reads for this option (``(env: NAME)`` in --help)."""
        return _ENV.findall(self.description)

    @property
    def repeatable(self) -> bool:
        """Meant to be given more than once (known list, or --help says so)."""
        return any(n in REPEATABLE for n in self.names) or bool(_REPEAT_WORDS.search(self.description))

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

    def option(self, token: str) -> Option | None:
        """The option an argv token names (``-c``, ``--ctx-size``, ``--ctx-size=8192``), removed ones included."""
        if not token.startswith("-") or len(token) < 2:
            return None
        return self.by_name.get(token.split("=", 1)[0])

    def env_names(self) -> set[str]:
        """Every environment variable this binary's --help says it reads."""
        return {e for opt in self.options for e in opt.env}


def is_server_env(name: str, help_: Help | None = None) -> bool:
    """Whether llama-server reads environment variable ``name`` by itself."""
    return (name.startswith(SERVER_ENV_PREFIXES) or name in SERVER_ENV_NAMES
            or (help_ is not None and name in help_.env_names()))


def server_environment(environ: dict[str, str], explicit: dict[str, str],
                       help_: Help | None = None) -> tuple[dict[str, str], list[str]]:
    """The environment llama-server gets, and the names dropped from ``environ``.

    llama-server reads LLAMA_ARG_* (nearly every flag), LLAMA_API_KEY and more from its environment,
    so an inherited variable could change a run behind the profile's back. They are dropped, except
    the ones the profile's ``env:`` (``explicit``) sets; ``explicit`` is applied last.
    """
    env = {k: v for k, v in environ.items() if not is_server_env(k, help_)}
    dropped = sorted(k for k in environ if k not in env and k not in explicit)
    env.update(explicit)
    return env, dropped


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
