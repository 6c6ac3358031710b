"""App arguments (``mos.app_args``) and the Monitor's options of ``mos-xdp run`` (``mos.cli.monitor_options``):
what an app declares, what the user types (``--arg KEY=VALUE``, ``-- --KEY VALUE``), the app's help, both
forms of ``init``, one-line errors, and each command-line option reaching the Monitor."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import click
import pytest
from click.testing import CliRunner

import mos
from mos import AppArg, AppArgs, MosError
from mos.app_args import app_help, parse_app_args
from mos.cli import main, offline
from mos.cli.monitor_options import OPTIONS, SECONDS, SIZE, monitor_params
from tests.pcaps import Conv
from tests.test_apps import http_captures

ROOT = Path(__file__).resolve().parents[1]

DECL = [
    AppArg("pattern", type=bytes, multiple=True, default=[b"/etc/passwd"], help="Forbidden bytes."),
    AppArg("interval", type=float, default=1.0, help="Seconds."),
    AppArg("count", type=int, help="How many."),
    AppArg("verbose", type=bool, help="Say more."),
    AppArg("mode", choices=["fast", "slow"], default="fast"),
    AppArg("dir-limit", type=int, default=5),
]

# An app that prints what init received, repr by repr (sorted keys: one line to compare)
ECHO_APP = """
    \"\"\"echo: prints its arguments.\"\"\"
    from mos import AppArg
    ARGS = [
        AppArg("pattern", type=bytes, multiple=True, default=[b"/etc/passwd"], help="Forbidden bytes."),
        AppArg("interval", type=float, default=1.0, help="Seconds between tables."),
        AppArg("verbose", type=bool, help="Say more."),
    ]
    def init(monitor, args):
        print("ARGS", sorted(args.items()), type(args).__name__, args.interval)
"""


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mos.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def write_app(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def args_line(out: str) -> str:
    [line] = [ln for ln in out.splitlines() if ln.startswith("ARGS ")]
    return line


# ---- the parser --------------------------------------------------------------------------------------


def test_pairs_and_argv_make_one_typed_namespace() -> None:
    a = parse_app_args(DECL, ["count=0x10", "pattern=evil"], ["--pattern", "/bin/sh", "--interval=2.5", "--verbose",
                                                               "--dir-limit", "7"])
    assert a == {"pattern": [b"evil", b"/bin/sh"], "interval": 2.5, "count": 16, "verbose": True, "mode": "fast",
                 "dir_limit": 7}
    assert isinstance(a, AppArgs) and a.pattern == a["pattern"] and a.dir_limit == 7
    with pytest.raises(AttributeError, match="no app argument 'nope'"):
        a.nope  # noqa: B018


def test_defaults_and_switches() -> None:
    a = parse_app_args(DECL)
    assert a == {"pattern": [b"/etc/passwd"], "interval": 1.0, "count": None, "verbose": False, "mode": "fast",
                 "dir_limit": 5}
    a["pattern"].append(b"x")  # an app changing its list leaves the declared default alone
    assert parse_app_args(DECL).pattern == [b"/etc/passwd"]
    assert parse_app_args(DECL, ["verbose=yes"]).verbose is True
    assert parse_app_args(DECL, [], ["--no-verbose"]).verbose is False
    assert parse_app_args(DECL, ["dir_limit=9"]).dir_limit == 9  # a dash and an underscore are one


@pytest.mark.parametrize("pairs,argv,msg", [
    (["nope=1"], [], "unknown app argument '--arg nope=1' (this app takes: --pattern, --interval"),
    ([], ["--nope", "1"], "unknown app argument '--nope'"),
    (["count=ten"], [], "app argument --count: 'ten' is not an integer"),
    ([], ["--interval", "soon"], "app argument --interval: 'soon' is not a number"),
    ([], ["--verbose=maybe"], "app argument --verbose: 'maybe' is not yes or no"),
    ([], ["--mode", "medium"], "app argument --mode: 'medium' is not one of fast, slow"),
    (["count"], [], "app argument --count: needs a value"),
    (["=1"], [], "--arg '=1': expected KEY=VALUE"),
    ([], ["stray"], "app argument 'stray': expected an option"),
    (["count=1"], ["--count", "2"], "app argument --count given twice"),
    ([], ["--no-verbose=1"], "--no-verbose takes no value"),
])
def test_mistakes_name_the_argument(pairs: List[str], argv: List[str], msg: str) -> None:
    with pytest.raises(MosError) as info:
        parse_app_args(DECL, pairs, argv)
    assert msg in str(info.value)


def test_required_argument() -> None:
    decl = [AppArg("key", required=True)]
    with pytest.raises(MosError, match="app argument --key is required"):
        parse_app_args(decl)
    assert parse_app_args(decl, ["key=v"]).key == "v"


def test_a_callable_type_and_its_reason() -> None:
    def port(text: str) -> int:
        value = int(text)
        if not 0 < value < 65536:
            raise ValueError("a port is 1 to 65535")
        return value

    decl = [AppArg("port", type=port)]
    assert parse_app_args(decl, ["port=443"]).port == 443
    with pytest.raises(MosError, match=r"app argument --port '70000': a port is 1 to 65535"):
        parse_app_args(decl, ["port=70000"])


def test_undeclared_app_gets_the_raw_strings() -> None:
    assert parse_app_args(None, ["a=1", "b=x=y"], ["--c", "3", "--d-e=4"]) == {"a": "1", "b": "x=y", "c": "3",
                                                                               "d_e": "4"}
    with pytest.raises(MosError, match="'a' given twice"):
        parse_app_args(None, ["a=1", "a=2"])
    with pytest.raises(MosError, match="--flag: needs a value"):
        parse_app_args(None, [], ["--flag"])


@pytest.mark.parametrize("make,msg", [
    (lambda: AppArg("2bad"), "AppArg name '2bad'"),
    (lambda: AppArg("help"), "'help' is taken"),
    (lambda: AppArg("x", type=3), "type must be"),
    (lambda: AppArg("x", type=bool, multiple=True), "cannot be multiple"),
])
def test_bad_declarations(make: Any, msg: str) -> None:
    with pytest.raises(MosError, match=msg):
        make()


def test_help_lists_every_argument_with_its_default() -> None:
    text = app_help(DECL, "x.py", "x: does things.\n\nMore.")
    assert text.splitlines()[0] == "x: does things."
    for a in DECL:
        assert a.option in text
    assert "--verbose/--no-verbose" in text and "default: /etc/passwd" in text and "repeatable" in text
    assert "one of fast, slow" in text
    assert "declares no arguments" in app_help(None, "y.py")


def test_exported_from_mos() -> None:
    assert mos.AppArg is AppArg and mos.AppArgs is AppArgs and "AppArg" in mos.__all__


# ---- through the CLI ---------------------------------------------------------------------------------


def test_run_hands_arg_pairs_and_the_words_after_dashdash_to_init(tmp_path: Path) -> None:
    pcap = str(http_captures().write(tmp_path / "http.pcap"))
    app = write_app(tmp_path, "echo.py", ECHO_APP)
    out = cli("run", app, "--pcap", pcap, "--no-progress", "--arg", "pattern=evil", "--arg", "interval=3",
              "--", "--pattern", "/bin/sh", "--verbose")
    assert out.returncode == 0, out.stderr
    assert args_line(out.stdout) == ("ARGS [('interval', 3.0), ('pattern', [b'evil', b'/bin/sh']), "
                                     "('verbose', True)] AppArgs 3.0")
    out = cli("run", app, "--pcap", pcap, "--no-progress")
    assert args_line(out.stdout) == "ARGS [('interval', 1.0), ('pattern', [b'/etc/passwd']), ('verbose', False)] " \
                                    "AppArgs 1.0"


@pytest.mark.parametrize("how", [["--app-help"], ["--", "--help"], ["--", "-h"]])
def test_app_help_needs_no_input(tmp_path: Path, how: List[str]) -> None:
    app = write_app(tmp_path, "echo.py", ECHO_APP)
    out = cli("run", app, *how)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("echo: prints its arguments.\n")
    assert "--pattern BYTES" in out.stdout and "Seconds between tables. [default: 1.0]" in out.stdout
    assert "--verbose/--no-verbose" in out.stdout
    assert "ARGS [" not in out.stdout  # help does not run init


def test_the_old_init_form_still_runs_and_refuses_arguments(tmp_path: Path) -> None:
    pcap = str(http_captures().write(tmp_path / "http.pcap"))
    app = write_app(tmp_path, "old.py", "def init(monitor):\n    print('old init', type(monitor).__name__)\n")
    out = cli("run", app, "--pcap", pcap, "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "old init Monitor" in out.stdout
    out = cli("run", app, "--pcap", pcap, "--arg", "a=1")
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        f"Error: {app}: init(monitor) takes no arguments, given a=1"]
    both = write_app(tmp_path, "both.py",
                     "from mos import AppArg\nARGS = [AppArg('a')]\ndef init(monitor):\n    pass\n")
    out = cli("run", both, "--pcap", pcap)
    assert out.returncode != 0 and "declares ARGS but init(monitor) takes no args" in out.stderr


def test_an_app_without_args_gets_a_dict_of_strings(tmp_path: Path) -> None:
    pcap = str(http_captures().write(tmp_path / "http.pcap"))
    app = write_app(tmp_path, "raw.py", "def init(monitor, args):\n    print('ARGS', sorted(args.items()))\n")
    out = cli("run", app, "--pcap", pcap, "--no-progress", "--arg", "k=v", "--arg", "n=1", "--", "--x", "y")
    assert out.returncode == 0, out.stderr
    assert args_line(out.stdout) == "ARGS [('k', 'v'), ('n', '1'), ('x', 'y')]"


@pytest.mark.parametrize("extra,msg", [
    (["--arg", "interval=soon"], "app argument --interval: 'soon' is not a number"),
    (["--", "--interval"], "app argument --interval: needs a value (NUMBER)"),
    (["--", "--colour", "red"], "unknown app argument '--colour' (this app takes: --pattern, --interval, --verbose)"),
    (["--arg", "noequals"], "unknown app argument '--arg noequals'"),
    (["stray"], "app argument 'stray': expected an option"),
])
def test_a_bad_argument_is_one_line_and_a_failure(tmp_path: Path, extra: List[str], msg: str) -> None:
    pcap = str(http_captures().write(tmp_path / "http.pcap"))
    app = write_app(tmp_path, "echo.py", ECHO_APP)
    out = cli("run", app, "--pcap", pcap, "--no-progress", *extra)
    assert out.returncode != 0
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"Error: {msg}"), out.stderr
    assert "ARGS [" not in out.stdout


def test_a_bad_args_declaration_is_one_line(tmp_path: Path) -> None:
    pcap = str(http_captures().write(tmp_path / "http.pcap"))
    app = write_app(tmp_path, "decl.py", "ARGS = ['pattern']\ndef init(monitor, args):\n    pass\n")
    out = cli("run", app, "--pcap", pcap)
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        f"Error: {app}: ARGS must be a list of mos.AppArg"]


# ---- the Monitor's options -----------------------------------------------------------------------------


def _sample(row: Any) -> Any:
    """A command-line value for the row's option (not the Monitor's default) and the value the Monitor
    must get; None when the row's type gives no generic sample."""
    if row.switch is not None:
        return None, row.switch
    t = row.type
    if isinstance(t, click.Choice):
        return t.choices[-1], t.choices[-1]
    if t is SIZE:
        return "64K", 64 << 10
    if t is SECONDS:
        return "5", 5.0
    if isinstance(t, click.IntRange):
        return "4096", 4096
    return None


def test_every_monitor_option_reaches_the_monitor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each option of the table, on one command line, arrives as its keyword; with none, the Monitor gets
    no keyword at all (its own defaults)."""
    import mos.monitor

    params = monitor_params()  # the real Monitor's, before it is replaced
    got: List[Dict[str, Any]] = []

    class Recording(mos.monitor.Monitor):
        def __init__(self, **kw: Any) -> None:
            got.append(kw)
            super().__init__(**kw)

    monkeypatch.setattr(mos.monitor, "Monitor", Recording)
    pcap = str(http_captures().write(tmp_path / "http.pcap"))
    app = write_app(tmp_path, "noop.py", "def init(monitor):\n    pass\n")
    argv: List[str] = []
    want: Dict[str, Any] = {}
    for row in OPTIONS:
        assert row.keyword in params, f"{row.keyword}: not a Monitor keyword"
        sample = _sample(row)
        if sample is None:
            continue
        text, value = sample
        argv += [row.flag] if text is None else [row.flag, text]
        want[row.keyword] = value
    assert {"policy", "buffer_client", "buffer_server", "pickup", "max_conns", "dir_buffer_limit", "max_segments",
            "memcap", "event_queue", "timeout_syn", "timeout_established", "checksum", "sync", "order",
            "peek_window"} <= set(want)
    runner = CliRunner()
    res = runner.invoke(offline.run, [app, "--pcap", pcap, "--no-progress", *argv])
    assert res.exit_code == 0, res.output
    assert got[-1] == want
    res = runner.invoke(offline.run, [app, "--pcap", pcap, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert got[-1] == {}


def test_monitor_options_change_what_the_app_sees(tmp_path: Path) -> None:
    """End to end, in a subprocess: an idle timeout from the command line ends a connection as TIMEOUT
    (FIN with the default), and --no-buffer-server leaves http_log no bytes to parse."""
    c = Conv()
    c.handshake()
    c.t += 10  # idle longer than the timeout given below
    c.send(True, b"GET / HTTP/1.0\r\n\r\n")
    c.send(False, b"HTTP/1.0 200 OK\r\n\r\n")
    c.close()
    pcap = str(c.built().write(tmp_path / "idle.pcap"))
    midstat = str(ROOT / "apps" / "midstat.py")

    def ends(*opts: str) -> List[str]:
        out = cli("run", midstat, "--pcap", pcap, "--no-progress", *opts, "--", "--interval", "0")
        assert out.returncode == 0, out.stderr
        final = out.stdout.split("-- ")[-1].splitlines()[2:]
        return [ln.split()[-1] for ln in final if ln.strip()]

    assert ends() == ["FIN"]
    assert ends("--timeout-established", "2")[0] == "TIMEOUT"
    http = str(http_captures().write(tmp_path / "http.pcap"))
    out = cli("run", str(ROOT / "apps" / "http_log.py"), "--pcap", http, "--no-progress")
    assert "4 requests" in out.stderr
    out = cli("run", str(ROOT / "apps" / "http_log.py"), "--pcap", http, "--no-progress", "--no-buffer-server")
    assert out.returncode == 0 and "0 requests" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("opt,value,msg", [
    ("--memcap", "lots", "'lots' is not a byte count"),
    ("--timeout-syn", "0", "--timeout-syn"),
    ("--event-queue", "10", "event_queue must be between 64"),
])
def test_a_bad_monitor_option_is_one_line(tmp_path: Path, opt: str, value: str, msg: str) -> None:
    pcap = str(http_captures().write(tmp_path / "http.pcap"))
    out = cli("run", str(ROOT / "apps" / "http_log.py"), "--pcap", pcap, opt, value)
    assert out.returncode != 0 and msg in out.stderr and "Traceback" not in out.stderr, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and msg in errors[0], out.stderr  # after click's usage lines, if any


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    """The App arguments section's example, run with a pattern of its own and asked for its help."""
    text = (ROOT / "README.md").read_text()
    section = text.index("### App arguments")
    start = text.index("```python\n", section) + len("```python\n")
    app = write_app(tmp_path, "example.py", text[start:text.index("```", start)])
    pcap = str(http_captures().write(tmp_path / "http.pcap"))
    out = cli("run", app, "--pcap", pcap, "--no-progress", "--", "--pattern", "one.example")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["found in 1"]
    out = cli("run", app, "--pcap", pcap, "--no-progress")
    assert out.returncode == 0 and out.stdout == ""
    assert "--pattern BYTES  Bytes to find. [repeatable; default: /etc/passwd]" in cli("run", app, "--app-help").stdout


def test_order_and_peek_window_on_the_command_line() -> None:
    """``run --help`` lists the handler order (its choices from the engine's table) and the peek window."""
    run_help = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--order" in run_help and "--peek-window" in run_help
    assert all(name in run_help for name in ("connection", "batch", "packet"))
    bad = CliRunner().invoke(main, ["run", "x.py", "--pcap", "x.pcap", "--order", "sometimes"])
    assert bad.exit_code != 0 and "sometimes" in bad.output
