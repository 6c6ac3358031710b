"""App arguments: what an app declares it takes, and the parsing of what the user gave.

An app declares its arguments with a module-level ``ARGS`` list::

    from mos import AppArg

    ARGS = [
        AppArg("pattern", type=bytes, multiple=True, default=[b"/etc/passwd"], help="Forbidden bytes."),
        AppArg("interval", type=float, default=1.0, help="Seconds between tables (0: none)."),
    ]

    def init(monitor, args):
        print(args.pattern, args["interval"])

The user gives them as ``mos-xdp run APP.py --arg pattern=evil`` (repeatable) or after ``--``
(``mos-xdp run APP.py --pcap f -- --pattern evil --interval 5``); both forms end in one :class:`AppArgs`,
typed as declared, defaults filled in (a value that starts with ``--`` is written ``--name=VALUE``).
``mos-xdp run APP.py --app-help`` prints :func:`app_help`. An app without ``ARGS`` gets the pairs as
strings. Every mistake is a :class:`~mos.errors.MosError` naming the argument.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import MosError

__all__ = ["AppArg", "AppArgs", "app_help", "declared_args", "parse_app_args", "wants_help"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
HELP_WORDS = ("--help", "-h")
"""After ``--``, these ask for the app's help instead of running it."""


def _to_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")


def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return int(text, 0)  # 0x1f, 0o17, 0b101


def _to_bytes(text: str) -> bytes:
    # surrogateescape: an argv byte that is not UTF-8 comes back as the byte the user typed
    return text.encode("utf-8", "surrogateescape")


# type -> (converter from the command line's text, metavar, what the value must look like)
_CONVERTERS: Dict[Any, Tuple[Callable[[str], Any], str, str]] = {
    str: (str, "TEXT", "text"),
    bytes: (_to_bytes, "BYTES", "bytes"),
    int: (_to_int, "INT", "an integer"),
    float: (float, "NUMBER", "a number"),
    bool: (_to_bool, "", "yes or no"),
}


class AppArg:
    """One argument an app takes.

    ``name`` is the option (``--name``; a dash and an underscore are the same) and the key in
    :class:`AppArgs` (with ``_``). ``type`` is ``str``, ``bytes``, ``int``, ``float``, ``bool`` (a
    switch: ``--name`` / ``--no-name``, or ``--arg name=yes``) or any callable taking the text and
    returning the value (a ``ValueError`` it raises is the user's mistake). ``multiple`` collects every
    occurrence into a list (the user's values replace the default). ``choices`` limits the converted
    value; ``required`` makes leaving it out an error; ``metavar`` names the value in the help.
    """

    __slots__ = ("name", "key", "type", "help", "default", "multiple", "required", "choices", "metavar")

    def __init__(self, name: str, *, type: Any = str, help: str = "", default: Any = None, multiple: bool = False,
                 required: bool = False, choices: Optional[Sequence[Any]] = None,
                 metavar: Optional[str] = None) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise MosError(f"AppArg name {name!r}: a letter, then letters, digits, '-' or '_'")
        key = name.replace("-", "_")
        if key == "help":
            raise MosError("AppArg name 'help' is taken: --help asks for the app's help")
        if type not in _CONVERTERS and not callable(type):
            raise MosError(f"AppArg {name!r}: type must be str, bytes, int, float, bool or a callable, not {type!r}")
        if type is bool and multiple:
            raise MosError(f"AppArg {name!r}: a bool switch cannot be multiple")
        self.name = name.replace("_", "-")
        self.key = key
        self.type = type
        self.help = help
        self.multiple = multiple
        self.required = required
        self.choices = list(choices) if choices is not None else None
        if multiple:
            self.default: Any = [] if default is None else list(default)
        else:
            self.default = False if default is None and type is bool else default
        known = _CONVERTERS.get(type)
        self.metavar = metavar or (known[1] if known else getattr(type, "__name__", "VALUE").upper())

    @property
    def option(self) -> str:
        """How it is written after ``--``."""
        return f"--{self.name}"

    def convert(self, text: str) -> Any:
        """The value of one occurrence given as ``text``; a MosError naming the argument otherwise."""
        known = _CONVERTERS.get(self.type)
        fn = known[0] if known else self.type
        try:
            value = fn(text)
        except (ValueError, TypeError, MosError) as exc:
            if known:
                raise MosError(f"app argument {self.option}: {text!r} is not {known[2]}") from None
            why = str(exc) or f"not a valid {self.metavar}"
            raise MosError(f"app argument {self.option} {text!r}: {why}") from None
        if self.choices is not None and value not in self.choices:
            raise MosError(f"app argument {self.option}: {text!r} is not one of "
                           f"{', '.join(str(c) for c in self.choices)}")
        return value

    def __repr__(self) -> str:
        return f"AppArg({self.name!r}, type={getattr(self.type, '__name__', self.type)}, default={self.default!r})"


class AppArgs(Dict[str, Any]):
    """What ``init(monitor, args)`` receives: a dict of the arguments by key, also readable as attributes
    (``args.pattern``, ``args["pattern"]``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no app argument {key!r} (declared: {', '.join(self) or 'none'})") from None


def declared_args(module: Any, where: str) -> Optional[List[AppArg]]:
    """The app module's ``ARGS`` (None when it declares none), checked: a list of distinct :class:`AppArg`."""
    decl = getattr(module, "ARGS", None)
    if decl is None:
        return None
    if not isinstance(decl, (list, tuple)) or not all(isinstance(a, AppArg) for a in decl):
        raise MosError(f"{where}: ARGS must be a list of mos.AppArg")
    seen: Dict[str, AppArg] = {}
    for a in decl:
        if a.key in seen:
            raise MosError(f"{where}: ARGS declares {a.option} twice")
        seen[a.key] = a
    return list(decl)


def wants_help(argv: Iterable[str]) -> bool:
    """The words after ``--`` ask for the app's help."""
    return any(w in HELP_WORDS for w in argv)


def _split_pair(pair: str) -> Tuple[str, Optional[str]]:
    key, eq, value = pair.partition("=")
    return key.strip(), (value if eq else None)


def _occurrences(pairs: Sequence[str], argv: Sequence[str]) -> List[Tuple[str, Optional[str], str]]:
    """(name, value or None for a bare switch, how the user wrote it) for each ``--arg`` pair, then each
    option after ``--``."""
    out: List[Tuple[str, Optional[str], str]] = []
    for pair in pairs:
        key, value = _split_pair(pair)
        if not key:
            raise MosError(f"--arg {pair!r}: expected KEY=VALUE")
        out.append((key, value, f"--arg {pair}"))
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("--") or word == "--":
            raise MosError(f"app argument {word!r}: expected an option (--NAME VALUE or --NAME=VALUE)")
        key, value = _split_pair(word[2:])
        if value is None and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 1
        out.append((key, value, word))
        i += 1
    return out


def parse_app_args(decl: Optional[Sequence[AppArg]], pairs: Sequence[str] = (), argv: Sequence[str] = ()) -> AppArgs:
    """The arguments given as ``--arg KEY=VALUE`` ``pairs`` and as ``argv`` (the words after ``--``), for
    an app declaring ``decl`` (None: no ``ARGS``, every value stays a string)."""
    given = _occurrences(pairs, argv)
    if decl is None:
        raw = AppArgs()
        for name, value, how in given:
            if value is None:
                raise MosError(f"app argument {how}: needs a value (this app declares no arguments, so no switches)")
            key = name.replace("-", "_")
            if key in raw:
                raise MosError(f"app argument {name!r} given twice (this app declares no arguments that repeat)")
            raw[key] = value
        return raw
    by_key = {a.key: a for a in decl}
    values: Dict[str, Any] = {}
    for name, value, how in given:
        key = name.replace("-", "_")
        negated = key.startswith("no_") and key[3:] in by_key and by_key[key[3:]].type is bool
        arg = by_key.get(key[3:] if negated else key)
        if arg is None:
            known = ", ".join(a.option for a in decl) or "none"
            raise MosError(f"unknown app argument {how!r} (this app takes: {known})")
        if arg.type is bool:
            if negated and value is not None:
                raise MosError(f"app argument {how}: --no-{arg.name} takes no value")
            v: Any = (not negated) if value is None else arg.convert(value)
        elif value is None:
            raise MosError(f"app argument {arg.option}: needs a value ({arg.metavar})")
        else:
            v = arg.convert(value)
        if arg.multiple:
            values.setdefault(arg.key, []).append(v)
        elif arg.key in values:
            raise MosError(f"app argument {arg.option} given twice (it takes one value)")
        else:
            values[arg.key] = v
    out = AppArgs()
    for a in decl:
        if a.key in values:
            out[a.key] = values[a.key]
        elif a.required:
            raise MosError(f"app argument {a.option} is required")
        else:
            out[a.key] = list(a.default) if a.multiple else a.default
    return out


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return ", ".join(_shown(v) for v in value) or "none"
    return str(value)


def app_help(decl: Optional[Sequence[AppArg]], app: str, doc: Optional[str] = None) -> str:
    """The help of an app: its docstring's first line, then each declared argument with its default."""
    summary = doc.strip().splitlines()[0] if doc and doc.strip() else app
    lines = [summary, "", f"Usage: mos-xdp run {app} (--pcap FILE | --iface IFACE) [OPTIONS] [-- APP-ARGS...]", ""]
    if decl is None:
        lines.append("This app declares no arguments (ARGS): it gets each --arg KEY=VALUE, and each --KEY VALUE "
                     "after --, as a string.")
        return "\n".join(lines)
    if not decl:
        lines.append("This app takes no arguments.")
        return "\n".join(lines)
    lines.append("App arguments (after --, or as --arg NAME=VALUE):")
    heads = [f"{a.option}/--no-{a.name}" if a.type is bool else f"{a.option} {a.metavar}" for a in decl]
    width = min(max(len(h) for h in heads), 28)
    for a, head in zip(decl, heads):
        notes = []
        if a.choices is not None:
            notes.append(f"one of {', '.join(str(c) for c in a.choices)}")
        if a.multiple:
            notes.append("repeatable")
        if a.required:
            notes.append("required")
        elif a.default is not None and a.default != [] and a.default is not False:
            notes.append(f"default: {_shown(a.default)}")
        # the notes wrap as one word (no-break spaces): a default is never cut in two
        text = a.help + (f" [{'; '.join(notes)}]".replace(" ", "\xa0") if notes else "")
        body = [t.replace("\xa0", " ") for t in textwrap.wrap(text, width=max(40, 100 - width - 4))] or [""]
        if len(head) > width:
            lines.append(f"  {head}")
            lines += [f"  {'':<{width}}  {t}" for t in body]
        else:
            lines.append(f"  {head:<{width}}  {body[0]}")
            lines += [f"  {'':<{width}}  {t}" for t in body[1:]]
    return "\n".join(lines)
