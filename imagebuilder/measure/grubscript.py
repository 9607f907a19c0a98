"""What grub measures while it boots an image, found by running the image's own grub scripts.

grub 2.06 with its TPM verifier (Debian's and SUSE's builds) measures, into PCR 8, every command
line it executes, with variables expanded (``grub_cmd: <argv joined by spaces>``; a ``menuentry``
or ``submenu`` line carries its ``{...}`` body verbatim) and the kernel command line
(``kernel_cmdline: ...``); and into PCR 9 every file it opens through its verifiers (configs it
sources, the kernel, the initrds) as a plain SHA-384 of the content, described by the path as
given. This module interprets the subset of grub script that grub-mkconfig and distribution
bootstrap configs use — ``if``/``elif``/``else``, functions, ``[``, ``search``, ``set``,
``source``/``configfile``, ``menuentry``/``submenu``, ``linux``/``initrd`` — against the image's
file systems, then boots the default entry as the menu's timeout would. Anything else (a
command it does not know, a menu that waits for a key, a loop) raises ``Unpredictable`` naming
it: a register is then reported unpredicted, never guessed.

Established on Debian 12's signed grub 2.06-13 against the event log of a real boot: the
embedded config (``normal (memdisk)/grub.cfg``) is not itself measured, and files on the
memdisk are not measured; ``!`` stays part of the measured command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

GRUB_STRING_PCR = 8
GRUB_BINARY_PCR = 9
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
DEVICE_PATH = re.compile(r"^\(([^)]*)\)(.*)$", re.DOTALL)
# Commands that change nothing a later measurement depends on (terminal, video, messages).
NO_EFFECT = {"echo", "serial", "terminal_input", "terminal_output", "terminal", "gfxmode",
             "set_background_image", "background_color", "loadfont", "true", "play", "sleep",
             "clear"}
KEYWORDS_UNSUPPORTED = {"while", "until", "for"}


class Unpredictable(Exception):
    """A measurement cannot be derived from the image; the message says which and why."""


class Volume(Protocol):
    uuid: str

    def kind(self, path: str) -> str | None:  # "file", "dir" or None (absent)
        ...

    def read(self, path: str) -> bytes | None:
        ...


@dataclass(frozen=True)
class GrubEvent:
    pcr: int
    description: str
    data: bytes  # what grub hashes


# --- parsing -----------------------------------------------------------------------------

@dataclass
class Word:
    parts: list[tuple[str, str]]  # (kind, text): lit, quoted, var, qvar

    @property
    def bare(self) -> str | None:
        """The word's text when it is one plain unquoted literal (keywords, braces)."""
        if len(self.parts) == 1 and self.parts[0][0] == "lit":
            return self.parts[0][1]
        return None


@dataclass
class Command:
    words: list[Word]
    block: str | None = None  # a menuentry/submenu body, "{...}" verbatim


@dataclass
class If:
    branches: list[tuple[list, list]]  # (condition statements, body statements)
    otherwise: list = field(default_factory=list)


@dataclass
class Function:
    name: str
    body: list


class GrubSyntaxError(Unpredictable):
    pass


class Parser:
    def __init__(self, text: str, where: str):
        self.text, self.where, self.i = text, where, 0

    def error(self, what: str) -> GrubSyntaxError:
        line = self.text.count("\n", 0, self.i) + 1
        return GrubSyntaxError(f"{self.where} line {line}: {what} (not understood by the grub interpreter)")

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def skip_blanks(self) -> None:
        while True:
            char = self.peek()
            if char in (" ", "\t"):
                self.i += 1
            elif char == "\\" and self.text[self.i + 1 : self.i + 2] == "\n":
                self.i += 2
            else:
                return

    def skip_separators(self) -> None:
        while True:
            self.skip_blanks()
            char = self.peek()
            if char in ("\n", ";"):
                self.i += 1
            elif char == "#":
                self.skip_comment()
            else:
                return

    def skip_comment(self) -> None:
        end = self.text.find("\n", self.i)
        self.i = len(self.text) if end < 0 else end

    def peek_keyword(self) -> str | None:
        start = self.i
        self.skip_blanks()
        word = self.word() if self.peek() not in ("", "\n", ";") else None
        self.i = start
        return word.bare if word else None

    def statements(self, terminators: tuple[str, ...] = ()) -> list:
        nodes: list[If | Function | Command] = []
        while True:
            self.skip_separators()
            if not self.peek():
                if terminators:
                    raise self.error(f"missing {' or '.join(terminators)}")
                return nodes
            keyword = self.peek_keyword()
            if keyword in terminators:
                return nodes
            if keyword == "if":
                nodes.append(self.if_statement())
            elif keyword == "function":
                nodes.append(self.function())
            elif keyword in KEYWORDS_UNSUPPORTED:
                raise self.error(f"'{keyword}' loop")
            else:
                nodes.append(self.command())

    def expect(self, keyword: str) -> None:
        self.skip_separators()
        word = self.word()
        if word.bare != keyword:
            raise self.error(f"expected '{keyword}'")

    def if_statement(self) -> If:
        self.expect("if")
        node = If([])
        condition = self.statements(("then",))
        self.expect("then")
        body = self.statements(("elif", "else", "fi"))
        node.branches.append((condition, body))
        while True:
            self.skip_separators()
            keyword = self.peek_keyword()
            if keyword == "elif":
                self.expect("elif")
                condition = self.statements(("then",))
                self.expect("then")
                node.branches.append((condition, self.statements(("elif", "else", "fi"))))
            elif keyword == "else":
                self.expect("else")
                node.otherwise = self.statements(("fi",))
            else:
                self.expect("fi")
                return node

    def function(self) -> Function:
        self.expect("function")
        self.skip_blanks()
        name = self.word().bare
        if not name:
            raise self.error("function without a name")
        self.skip_separators()
        if self.word().bare != "{":
            raise self.error(f"function {name} without '{{'")
        body = self.statements(("}",))
        self.expect("}")
        return Function(name, body)

    def command(self) -> Command:
        words: list[Word] = []
        while True:
            self.skip_blanks()
            char = self.peek()
            if char in ("", "\n", ";"):
                break
            if char == "#" and not words:
                self.skip_comment()
                break
            if char == "{" and words and words[0].bare in ("menuentry", "submenu"):
                return Command(words, self.block())
            words.append(self.word())
        return Command(words)

    def block(self) -> str:
        """The ``{...}`` body verbatim, braces included, as grub keeps it for the entry."""
        start, depth, quote = self.i, 0, ""
        while self.i < len(self.text):
            char = self.text[self.i]
            if quote:
                if char == quote:
                    quote = ""
                elif char == "\\" and quote == '"':
                    self.i += 1
            elif char in ("'", '"'):
                quote = char
            elif char == "\\":
                self.i += 1
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    self.i += 1
                    return self.text[start : self.i]
            self.i += 1
        raise self.error("unterminated '{' block")

    def word(self) -> Word:
        parts: list[tuple[str, str]] = []
        literal = ""

        def flush(kind: str = "lit") -> None:
            nonlocal literal
            if literal:
                parts.append((kind, literal))
                literal = ""

        while self.i < len(self.text):
            char = self.text[self.i]
            if char in (" ", "\t", "\n", ";"):
                break
            if char == "\\":
                literal += self.text[self.i + 1 : self.i + 2]
                self.i += 2
            elif char == "'":
                flush()
                end = self.text.find("'", self.i + 1)
                if end < 0:
                    raise self.error("unterminated quote")
                parts.append(("quoted", self.text[self.i + 1 : end]))
                self.i = end + 1
            elif char == '"':
                flush()
                self.i += 1
                parts.append(("quoted", ""))  # "" is an argument even when empty
                while True:
                    if self.i >= len(self.text):
                        raise self.error("unterminated quote")
                    char = self.text[self.i]
                    if char == '"':
                        self.i += 1
                        break
                    if char == "\\" and self.text[self.i + 1 : self.i + 2] in ('"', "\\", "$", "\n"):
                        literal += self.text[self.i + 1]
                        self.i += 2
                    elif char == "$":
                        flush("quoted")
                        parts.append(("qvar", self.variable()))
                    else:
                        literal += char
                        self.i += 1
                flush("quoted")
            elif char == "$":
                flush()
                parts.append(("var", self.variable()))
            else:
                literal += char
                self.i += 1
        flush()
        return Word(parts)

    def variable(self) -> str:
        self.i += 1  # the $
        if self.peek() == "{":
            end = self.text.find("}", self.i)
            if end < 0:
                raise self.error("unterminated ${")
            name, self.i = self.text[self.i + 1 : end], end + 1
            return name
        match = NAME.match(self.text, self.i) or re.compile(r"[0-9?#@*]").match(self.text, self.i)
        if not match:
            return ""
        self.i = match.end()
        return match.group()


def parse(text: str, where: str) -> list:
    return Parser(text, where).statements()


# --- running ---------------------------------------------------------------------------------

@dataclass
class ScriptEntry:
    title: str
    entry_id: str
    extra_args: list[str]
    body: str  # the block without its braces
    submenu: bool


class Booted(Exception):
    """The default entry loaded a kernel: grub hands over and measures nothing more."""


@dataclass
class ScriptState:
    variables: dict[str, str]
    exported: set[str]
    menu: list[ScriptEntry] = field(default_factory=list)


def loader_cmdline(args: list[str]) -> str:
    """grub_create_loader_cmdline: backslash before \\ ' and \", quotes around an argument
    holding a space, one space between arguments."""
    out = []
    for arg in args:
        escaped = re.sub(r"([\\'\"])", r"\\\1", arg)
        out.append(f'"{escaped}"' if " " in arg else escaped)
    return " ".join(out)


class Grub:
    """One boot through grub: ``boot(embedded_config)`` returns the events in order."""

    def __init__(self, volumes: dict[str, Volume], boot_device: str, boot_dir: str, prefix: str,
                 memdisk: Volume | None, features: list[str], has_module):
        self.volumes = dict(volumes)
        if memdisk is not None:
            self.volumes["memdisk"] = memdisk
        self.has_module = has_module
        self.events: list[GrubEvent] = []
        self.functions: dict[str, Function] = {}
        self.measuring = True
        variables = {"root": boot_device, "cmdpath": f"({boot_device}){boot_dir}",
                     "prefix": f"({boot_device}){prefix}" if prefix else "",
                     "grub_platform": "efi", "grub_cpu": "x86_64",
                     **{name: "y" for name in features}}
        self.context = ScriptState(variables, set(variables))
        self.positional: list[str] = []
        self.kernel: tuple[str, bytes] | None = None  # (path, content) the default entry loads

    # measurement
    def measure_string(self, text: str, prefix: str = "grub_cmd: ") -> None:
        if self.measuring:
            self.events.append(GrubEvent(GRUB_STRING_PCR, prefix + text, text.encode()))

    def open_file(self, path: str) -> bytes:
        device, inside = self.resolve(path)
        volume = self.volumes.get(device)
        data = volume.read(inside) if volume is not None else None
        if data is None:
            raise Unpredictable(f"grub would fail to open {path}: the boot does not reach a kernel")
        if self.measuring and device != "memdisk":
            self.events.append(GrubEvent(GRUB_BINARY_PCR, path, data))
        return data

    def resolve(self, path: str) -> tuple[str, str]:
        match = DEVICE_PATH.match(path)
        if match:
            return match.group(1), match.group(2) or "/"
        return self.context.variables.get("root", ""), path

    def kind(self, path: str) -> str | None:
        device, inside = self.resolve(path)
        volume = self.volumes.get(device)
        if volume is None:
            return None
        return "dir" if inside in ("", "/") else volume.kind(inside)

    # expansion
    def value(self, name: str) -> str:
        if name.isdigit():
            index = int(name) - 1
            return self.positional[index] if 0 <= index < len(self.positional) else ""
        if name in ("@", "*"):
            return " ".join(self.positional)
        if name == "#":
            return str(len(self.positional))
        return self.context.variables.get(name, "")

    def expand(self, word: Word) -> list[str]:
        fields, current, present = [], "", False
        for kind, text in word.parts:
            if kind == "var":
                pieces = self.value(text).split()
                if pieces:
                    current += pieces[0]
                    for piece in pieces[1:]:
                        fields.append(current)
                        current = piece
                    present = True
            elif kind == "qvar":
                current += self.value(text)
                present = True
            else:
                current += text
                present = True
        if present and (current or any(kind in ("quoted", "qvar") for kind, _ in word.parts)):
            fields.append(current)
        return fields

    # execution
    def run(self, nodes: list) -> int:
        status = 0
        for node in nodes:
            if isinstance(node, Function):
                self.functions[node.name] = node
                status = 0
            elif isinstance(node, If):
                status = self.run_if(node)
            else:
                argv = [field for word in node.words for field in self.expand(word)]
                if node.block is not None:
                    argv.append(node.block)
                status = self.execute(argv, node.block) if argv else 0
            self.context.variables["?"] = str(status)
        return status

    def run_if(self, node: If) -> int:
        for condition, body in node.branches:
            if self.run(condition) == 0:
                return self.run(body)
        return self.run(node.otherwise)

    def execute(self, argv: list[str], block: str | None) -> int:
        self.measure_string(" ".join(argv))
        negate = argv[0] == "!"
        if negate:
            argv = argv[1:]
        status = self.dispatch(argv, block) if argv else 0
        return (0 if status else 1) if negate else status

    def dispatch(self, argv: list[str], block: str | None) -> int:
        name, args = argv[0], argv[1:]
        assignment = ASSIGNMENT.fullmatch(name)
        if assignment and not args:
            self.context.variables[assignment.group(1)] = assignment.group(2)
            return 0
        if name in self.functions:
            saved = self.positional
            self.positional = args
            try:
                return self.run(self.functions[name].body)
            finally:
                self.positional = saved
        handler = getattr(self, "cmd_" + name.replace("[", "test"), None)
        if handler is not None:
            return handler(args, block)
        if name in NO_EFFECT:
            return 0
        raise Unpredictable(f"grub command '{name}' is not modelled by the interpreter")

    def cmd_set(self, args, block) -> int:
        for arg in args:
            key, _, value = arg.partition("=")
            self.context.variables[key] = value
        return 0

    def cmd_export(self, args, block) -> int:
        self.context.exported.update(args)
        return 0

    def cmd_insmod(self, args, block) -> int:
        """A module built into the signed image is already there; one from disk would be read
        (and measured) from $prefix, which is not modelled."""
        if args and not self.has_module(args[0]):
            raise Unpredictable(f"insmod {args[0]}: the module is not built into grub; "
                                "loading it from disk is not modelled")
        return 0

    def cmd_unset(self, args, block) -> int:
        for arg in args:
            self.context.variables.pop(arg, None)
        return 0

    def cmd_false(self, args, block) -> int:
        return 1

    def cmd_test(self, args, block) -> int:
        if args and args[-1] == "]":
            args = args[:-1]
        return 0 if self.test(args) else 1

    def test(self, args: list[str]) -> bool:
        if "-o" in args:
            index = args.index("-o")
            return self.test(args[:index]) or self.test(args[index + 1 :])
        if "-a" in args:
            index = args.index("-a")
            return self.test(args[:index]) and self.test(args[index + 1 :])
        if args and args[0] == "!":
            return not self.test(args[1:])
        if len(args) == 0:
            return False
        if len(args) == 1:
            return args[0] != ""
        if len(args) == 2:
            operator, operand = args
            if operator == "-z":
                return operand == ""
            if operator == "-n":
                return operand != ""
            kind = self.kind(operand) if operator in ("-e", "-f", "-d", "-s") else "?"
            if operator == "-e":
                return kind is not None
            if operator == "-f":
                return kind == "file"
            if operator == "-d":
                return kind == "dir"
            if operator == "-s":
                return kind == "file" and bool(self.open_size(operand))
        if len(args) == 3:
            left, operator, right = args
            if operator in ("=", "=="):
                return left == right
            if operator == "!=":
                return left != right
        raise Unpredictable(f"grub test '[ {' '.join(args)} ]' is not modelled")

    def open_size(self, path: str) -> int:
        device, inside = self.resolve(path)
        data = self.volumes[device].read(inside)
        return len(data or b"")

    def cmd_search(self, args, block) -> int:
        mode, variable, wanted = "file", "", ""
        for arg in args:
            if arg in ("--file", "-f"):
                mode = "file"
            elif arg in ("--fs-uuid", "-u"):
                mode = "uuid"
            elif arg in ("--label", "-l"):
                raise Unpredictable("grub 'search --label' is not modelled")
            elif arg.startswith("--set"):
                variable = arg.partition("=")[2] or "root"
            elif arg in ("-s",):
                variable = "root"
            elif arg.startswith("-"):
                continue  # --no-floppy, --hint...: do not change the result here
            else:
                wanted = arg
        for device, volume in self.volumes.items():
            if device == "memdisk":
                continue
            if (volume.uuid.lower() == wanted.lower() if mode == "uuid"
                    else volume.kind(wanted) is not None):
                if variable:
                    self.context.variables[variable] = device
                return 0
        return 1

    def cmd_source(self, args, block) -> int:
        measuring, self.measuring = self.measuring, True  # what a config loads is measured
        try:
            text = self.open_file(args[0]).decode(errors="replace")
            self.context.variables["config_file"] = args[0]
            self.context.variables["config_directory"] = args[0].rsplit("/", 1)[0]
            return self.run(parse(text, args[0]))
        finally:
            self.measuring = measuring

    def cmd_configfile(self, args, block) -> int:
        """A new context (exported variables only) whose menu grub shows, then boots from."""
        outer = self.context
        variables = {name: value for name, value in outer.variables.items() if name in outer.exported}
        self.context = ScriptState(variables, set(outer.exported))
        try:
            self.cmd_source(args, block)
            if self.context.menu:
                self.boot_default()
        finally:
            self.context = outer
        return 0

    cmd_normal = cmd_configfile

    def cmd_menuentry(self, args, block, submenu: bool = False) -> int:
        if block is None:
            raise Unpredictable("menuentry without a body")
        args = args[:-1]  # the block
        positional, entry_id, skip = [], "", False
        for index, arg in enumerate(args):
            if skip:
                skip = False
            elif arg in ("--id", "--class", "--users", "--hotkey"):
                skip = True
                if arg == "--id" and index + 1 < len(args):
                    entry_id = args[index + 1]
            elif arg.startswith("--id="):
                entry_id = arg.partition("=")[2]
            elif arg.startswith("--"):
                continue  # --unrestricted, --class=...: no effect on what boots
            else:
                positional.append(arg)
        if not positional:
            raise Unpredictable("menuentry without a title")
        self.context.menu.append(ScriptEntry(positional[0], entry_id, positional[1:],
                                           block[1:-1], submenu))
        return 0

    def cmd_submenu(self, args, block) -> int:
        return self.cmd_menuentry(args, block, submenu=True)

    def boot_default(self) -> None:
        timeout = self.context.variables.get("timeout", "")
        if not re.fullmatch(r"\d+", timeout):
            raise Unpredictable(f"grub's menu waits for a key press (timeout={timeout!r})")
        default = self.context.variables.get("default", "0") or "0"
        menu = self.context.menu
        entry = next((entry for index, entry in enumerate(menu)
                      if default in (str(index), entry.title, entry.entry_id)), None)
        if entry is None or entry.submenu:
            raise Unpredictable(f"grub's default entry {default!r} is not a top-level menu entry")
        self.measure_string(" ".join(["setparams", entry.title, *entry.extra_args]))
        saved = self.positional
        self.positional = [entry.title, *entry.extra_args]
        try:
            self.run(parse(entry.body, f"menu entry '{entry.title}'"))
        finally:
            self.positional = saved
        if self.kernel is None:
            raise Unpredictable(f"grub's default entry '{entry.title}' loads no kernel")
        raise Booted

    def cmd_linux(self, args, block) -> int:
        if not args:
            raise Unpredictable("linux without a kernel")
        self.kernel = (args[0], self.open_file(args[0]))
        self.measure_string(loader_cmdline(args), prefix="kernel_cmdline: ")
        return 0

    def cmd_initrd(self, args, block) -> int:
        for path in args:
            self.open_file(path)
        return 0

    cmd_linuxefi = cmd_linux
    cmd_initrdefi = cmd_initrd

    def boot(self, embedded_config: str) -> list[GrubEvent]:
        """Run from grub's start: its embedded config, else normal mode on $prefix/grub.cfg;
        return the measurements up to the kernel hand-over."""
        try:
            if embedded_config:
                self.measuring = False  # the embedded config's own lines are not measured
                self.run(parse(embedded_config, "grub's embedded config"))
            else:
                self.cmd_configfile([self.context.variables["prefix"] + "/grub.cfg"], None)
        except Booted:
            return self.events
        raise Unpredictable("grub finished its configuration without booting a kernel")
