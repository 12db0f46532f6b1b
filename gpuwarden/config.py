"""The config foundation every component loads its files through.

One way to read a YAML file, validate it and say what is wrong:

- ``read_yaml(path)`` / ``parse_yaml(text, file)`` parse once and keep a ``LineIndex``: the
  1-based line of every key and list item (a field without a line of its own gets its nearest
  ancestor's). A key given twice is a problem (YAML would silently keep the last one).
- ``Schema`` wraps a JSON Schema (Draft 2020-12). ``problems()`` lists every violation as a
  ``Problem``, the field named by its dotted path (``web.tls.key_file``, ``steps[2].at``); an
  unknown key is reported on its own line as ``unknown field (allowed: ...)``. ``with_defaults()``
  fills in the schema's ``default`` values: the schema is the one place a default is written.
- ``ConfigError`` is the one error type. Its message is one ``file:line: field: message`` line
  per problem (``file:line`` when the line is known, the field left out when there is none),
  then the component's hint. Components subclass it (``rules.config.ConfigError``,
  ``ScenarioError``, the agent's ``ConfigError``, ``PolicyConfigError``, ...) so their
  ``except`` clauses keep working.
- ``check_section()`` validates one section of a bigger file (the agent's ``remediation:``,
  ``slurm:``, ``predictor:``) through the ``error(field, message)`` factory its owner hands in
  (the agent's names the file and line) and returns the section with defaults filled in.

Durations inside configs use ``gpuwarden.durations`` (Prometheus' grammar).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import jsonschema
import yaml

from gpuwarden import durations

FieldPath = tuple[str | int, ...]
ErrorFactory = Callable[[str, str], Exception]


def dotted(path: Iterable[str | int]) -> str:
    """``("steps", 2, "at")`` -> ``steps[2].at``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def split(field: str) -> FieldPath:
    """The inverse of ``dotted`` for the dotted spellings components pass around
    (``database.retention.max_age``, ``remediation.commands.quarantine.0``, ``steps[2].at``)."""
    parts: list[str | int] = []
    for piece in field.replace("[", ".").replace("]", "").split("."):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return tuple(parts)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else self.file
        return ": ".join(p for p in (where, self.field, self.message) if p)


class ConfigError(Exception):
    """A config that cannot be used. ``.problems`` lists every problem found (``file:line:
    field: message`` each); ``.file``, ``.line`` and ``.field`` describe the first one.

    ``hint`` (a class attribute a component may set) is added as the message's last line. A plain
    string is accepted too, for a message that has no field (it becomes the only problem's text).
    """

    hint: ClassVar[str] = ""

    def __init__(self, problems: Sequence[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", None, "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        first = self.problems[0] if self.problems else Problem("", None, "", "")
        self.file, self.line, self.field = first.file, first.line, first.field
        text = "\n".join(str(p) for p in self.problems)
        super().__init__(text + (f"\n{self.hint}" if self.hint and self.problems else ""))


# --- YAML with line numbers -----------------------------------------------------------------


class LineIndex:
    """The 1-based line of every key and list item of a YAML document."""

    def __init__(self, marks: Mapping[FieldPath, int] | None = None) -> None:
        self.marks: dict[FieldPath, int] = dict(marks or {})

    def line(self, path: Iterable[str | int]) -> int | None:
        """Line of ``path``, or of its nearest ancestor that has one (None: no document)."""
        p = tuple(path)
        while p:
            if p in self.marks:
                return self.marks[p]
            p = p[:-1]
        return self.marks.get(())


@dataclass
class Document:
    """A parsed file: its data, where each field is, and the name problems are reported under."""

    file: str
    data: Any
    lines: LineIndex

    def problem(self, path: Iterable[str | int], message: str) -> Problem:
        path = tuple(path)
        return Problem(self.file, self.lines.line(path), dotted(path), message)


def _walk(
    node: yaml.Node, path: FieldPath, marks: dict[FieldPath, int], duplicates: list[tuple[FieldPath, int]]
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = path + (key,)
            if key in seen:
                duplicates.append((sub, key_node.start_mark.line + 1))
            seen.add(key)
            marks[sub] = key_node.start_mark.line + 1
            _walk(value_node, sub, marks, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            marks[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), marks, duplicates)


def parse_yaml(text: str, file: str, error: type[ConfigError] = ConfigError) -> Document:
    """Parses one YAML document (safe loader) with its line index. An empty document has data
    ``None``. Invalid YAML and duplicate keys raise ``error`` naming file and line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(file, None, LineIndex({(): 1}))
        marks: dict[FieldPath, int] = {(): node.start_mark.line + 1}
        duplicates: list[tuple[FieldPath, int]] = []
        _walk(node, (), marks, duplicates)
        if duplicates:
            raise error(
                [Problem(file, line, dotted(p), "duplicate key (remove one of them)") for p, line in duplicates]
            )
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise error([Problem(file, line, "", f"not valid YAML: {problem}")]) from None
    finally:
        loader.dispose()
    return Document(file, data, LineIndex(marks))


def read_yaml(path: str | Path, error: type[ConfigError] = ConfigError) -> Document:
    """Reads and parses a YAML file (see ``parse_yaml``); an unreadable file raises ``error``."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise error([Problem(file, None, "", f"cannot read: {reason}")]) from None
    return parse_yaml(text, file, error)


# --- JSON Schema ----------------------------------------------------------------------------

# A rewording hook: (error, its path) -> the problems to report instead as (path, message)
# pairs, or None for the default wording.
Describe = Callable[[jsonschema.ValidationError, FieldPath], "list[tuple[FieldPath, str]] | None"]


class Schema:
    """A JSON Schema, its validator built once."""

    def __init__(self, schema: Mapping[str, Any], name: str = "") -> None:
        self.schema = dict(schema)
        self.name = name
        cls = jsonschema.validators.validator_for(self.schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(self.schema)
        self._validator = cls(self.schema)

    @classmethod
    def packaged(cls, package: str, resource: str) -> Schema:
        """The schema shipped as package data (``importlib.resources``), loaded once."""
        return _packaged(package, resource)

    # --- validation

    def errors(self, data: Any) -> Iterator[jsonschema.ValidationError]:
        """Every violation, as specific as the schema allows: ``allOf`` is flattened, and a
        failed ``oneOf``/``anyOf`` reports its most relevant branch's error."""
        yield from _leaves(self._validator.iter_errors(data))

    def problems(
        self, data: Any, doc: Document | None = None, prefix: FieldPath = (), describe: Describe | None = None
    ) -> list[Problem]:
        """Every violation of ``data`` (the whole of ``doc.data``, or the section at ``prefix``
        of it) as ``Problem``s sorted by line, each at most once."""
        file = doc.file if doc else ""
        lines = doc.lines if doc else LineIndex()
        found: list[Problem] = []
        for path, message in self.messages(data, describe):
            full = prefix + path
            found.append(Problem(file, lines.line(full), dotted(full) or "(top level)", message))
        return sorted(set(found), key=lambda p: (p.line or 0, p.field, p.message))

    def messages(self, data: Any, describe: Describe | None = None) -> list[tuple[FieldPath, str]]:
        """Every violation as (path within ``data``, message)."""
        out: list[tuple[FieldPath, str]] = []
        for err in self.errors(data):
            path: FieldPath = tuple(err.absolute_path)
            custom = describe(err, path) if describe is not None else None
            if custom is not None:
                out += custom
            elif (
                err.validator == "additionalProperties"
                and isinstance(err.instance, dict)
                and isinstance(err.schema, Mapping)
                and err.validator_value is False
            ):
                known = sorted(err.schema.get("properties", {}))
                patterns = list(err.schema.get("patternProperties", {}))
                for extra in sorted(
                    k for k in err.instance if k not in known and not any(re.search(p, k) for p in patterns)
                ):
                    out.append((path + (extra,), f"unknown field (allowed: {', '.join(known)})"))
            elif err.validator == "pattern" and err.validator_value == durations.PATTERN:
                out.append(
                    (
                        path,
                        f"{err.instance!r} does not match Prometheus' duration grammar: expected {durations.EXAMPLES}",
                    )
                )
            else:
                out.append((path, err.message))
        return out

    # --- defaults

    def with_defaults(self, data: Any) -> Any:
        """A copy of ``data`` with every absent property that has a ``default`` in the schema
        filled in (recursively: an object defaulted to ``{}`` gets its own properties'
        defaults). Call it on valid data."""
        out = copy.deepcopy(data)
        self._fill(self.schema, out)
        return out

    def default(self, *path: str) -> Any:
        """The ``default`` written in the schema for the property at ``path``."""
        node: Mapping[str, Any] = self.schema
        for key in path:
            node = self._resolve(node)["properties"][key]
        return copy.deepcopy(node["default"])

    def defaults(self) -> dict[str, Any]:
        """The schema's defaults of its top-level properties (the defaults of an empty object)."""
        out: dict[str, Any] = self.with_defaults({})
        return out

    def _resolve(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in node and isinstance(node["$ref"], str) and node["$ref"].startswith("#/"):
            target: Any = self.schema
            for part in node["$ref"][2:].split("/"):
                target = target[part]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def _fill(self, node: Any, data: Any) -> None:
        if not isinstance(node, Mapping):
            return
        node = self._resolve(node)
        if isinstance(data, dict):
            props = node.get("properties", {})
            for key, sub in props.items():
                sub_r = self._resolve(sub) if isinstance(sub, Mapping) else {}
                if key not in data and "default" in sub_r:
                    data[key] = copy.deepcopy(sub_r["default"])
            for key, value in data.items():
                if key in props:
                    self._fill(props[key], value)
                elif isinstance(node.get("additionalProperties"), Mapping):
                    self._fill(node["additionalProperties"], value)
        elif isinstance(data, list) and isinstance(node.get("items"), Mapping):
            for item in data:
                self._fill(node["items"], item)


@functools.cache
def _packaged(package: str, resource: str) -> Schema:
    text = resources.files(package).joinpath(resource).read_text(encoding="utf-8")
    return Schema(json.loads(text), name=resource)


def _leaves(errors: Iterable[jsonschema.ValidationError]) -> Iterator[jsonschema.ValidationError]:
    for err in errors:
        if err.validator == "allOf" and err.context:
            yield from _leaves(err.context)
        elif err.validator in ("oneOf", "anyOf") and err.context:
            best = jsonschema.exceptions.best_match([err])
            if best is None or best is err:
                yield err
            else:
                yield from _leaves([best])
        else:
            yield err


# --- sections of a bigger file --------------------------------------------------------------


def fail(found: Sequence[tuple[str, str]], error: ErrorFactory) -> NoReturn:
    """Raises the problems ``(field, message)`` through ``error``: one exception carrying all of
    them, by line, when the factory builds ``ConfigError``s (each with its own line), else the
    first one's with the others appended."""
    excs = [error(field, message) for field, message in found]
    first = excs[0]
    if all(isinstance(e, ConfigError) for e in excs):
        problems = [p for e in excs if isinstance(e, ConfigError) for p in e.problems]
        raise type(first)(sorted(problems, key=lambda p: p.line or 0))
    more = "".join(f"; also {f}: {m}" for f, m in found[1:])
    if more:
        raise error(found[0][0], found[0][1] + more)
    raise first


def check_section(
    section: Any, schema: Schema, name: str, error: ErrorFactory, describe: Describe | None = None
) -> dict[str, Any]:
    """Validates the section ``name`` of a bigger file (``None`` = absent = ``{}``), raising every
    problem through ``error(field, message)`` (fields spelled ``name.key.sub``); returns the
    section with the schema's defaults filled in."""
    doc = {} if section is None else section
    if not isinstance(doc, Mapping):
        fail([(name, f"expected a mapping, got {type(doc).__name__}")], error)
    found = [(dotted((name, *path)), message) for path, message in schema.messages(dict(doc), describe)]
    if found:
        fail(sorted(dict.fromkeys(found)), error)
    filled: dict[str, Any] = schema.with_defaults(dict(doc))
    return filled


def section_error(cls: type[Exception], file: str = "") -> ErrorFactory:
    """An ``error(field, message)`` factory for a section read without its file's line index
    (a ``cls`` subclassing ``ConfigError`` gets a ``Problem``, anything else the text)."""

    def make(field: str, message: str) -> Exception:
        problem = Problem(file, None, field, message)
        if issubclass(cls, ConfigError):
            return cls([problem])
        return cls(str(problem))

    return make
