"""Prompt templates: the typed variable schema, version checks and sandboxed rendering.

A prompt version is a list of chat messages whose contents are Jinja2 templates (a chat prompt),
or one Jinja2 template of raw prompt text (a text prompt, for models without a chat template),
plus a schema of typed variables. `check_version` lists everything wrong with a version before
it is stored; `render` checks a request's values against the schema and renders every message,
`render_text` the text template.

Templates run in a locked-down dialect of Jinja2:

- `ImmutableSandboxedEnvironment`, autoescape off, trailing newlines kept, otherwise Jinja's
  default whitespace handling. No `include`, `import`, `extends` or recursive loops.
- Attributes are an allow-list: the non-mutating, non-padding `str` methods (`upper`, `split`,
  `replace`, ...), `dict.get/items/keys/values`, `list.count/index`, `loop.*` and namespace
  attributes. Everything else, `str.format` included, is a `SecurityError` at render time.
- Globals are `range` (at most `MAX_RANGE` items), `dict` and `namespace`; filters are an
  allow-list of Jinja's built-in filters, the ones that can grow their input bounded.
- Undefined variables are errors when printed, iterated, compared or computed with; only
  `x is defined`, `x | default(...)` and truth tests (`{% if x %}` is false) work on them.
- Only data prints: strings, numbers, booleans, none and lists/dicts of them. Functions,
  macros, generators and the like are errors, so no repr of Python internals reaches output.
- Every render has a budget: `MAX_RENDER_STEPS` steps (loop iterations, calls, filter calls and
  `range` items), `MAX_RENDER_WORK` characters of strings and list items built, and
  `MAX_RENDER_SECONDS` of wall time as a backstop. No single value may exceed `MAX_VALUE_SIZE`
  and the rendered messages together may not exceed `MAX_OUTPUT_CHARS`.

Rules chosen where the contract is silent: a required variable may not have a default; a JSON
null value counts as not supplied; `max_length` applies to string and string_list variables
only and `max_items` to string_list only; an integer variable accepts integral floats (`3.0`)
and gives the template an `int`; a number keeps the type it arrived with.

This module imports neither grpc nor generated code.
"""

import functools
import math
import re
import time
import types
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias, cast

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, Undefined, meta, nodes
from jinja2 import filters as jinja_filters
from jinja2.environment import Template
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, pass_context, pass_environment
from jinja2.visitor import NodeTransformer

from services.common import reasons
from services.common.errors import FieldViolation, InvalidArgument

JsonValue: TypeAlias = (
    "str | int | float | bool | Sequence[JsonValue] | Mapping[str, JsonValue] | None"
)
"""A JSON-like value: what a `google.protobuf.Value` holds (tuples and lists alike)."""

CHAT_ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 64
MAX_TEMPLATE_CHARS = 100_000
MAX_VERSION_TEMPLATE_CHARS = 200_000
MAX_NAME_CHARS = 64
MAX_ENUM_VALUES = 256
MAX_DESCRIPTION_CHARS = 1024

MAX_OUTPUT_CHARS = 1_000_000
"""Characters of all rendered messages of one render together."""
MAX_VALUE_SIZE = 1_000_000
"""Characters of one string (or items of one list) a template may build or print."""
MAX_RENDER_STEPS = 100_000
"""Loop iterations, calls, filter calls and `range` items per render; a macro call counts
`MACRO_CALL_STEPS`."""
MACRO_CALL_STEPS = 5
MAX_RENDER_WORK = 16_000_000
"""Characters of strings and items of lists built per render, output included."""
MAX_RENDER_SECONDS = 1.0
"""Wall-time backstop per render, for work the step budget does not see."""
MAX_RANGE = 10_000
"""Items of one `range(...)`."""
MAX_INT_BITS = 4096
"""Bits of an integer built with `*` or `**`."""
MAX_FORMAT_WIDTH = 1000
"""Width or precision of a `%` conversion."""
MAX_CHUNK = 10_000
"""`batch` size, `slice` count and `indent`/`wordwrap` parameters."""
TEMPLATE_CACHE_SIZE = 512
"""Compiled templates kept, keyed by template text."""
_MAX_DESCRIPTION = 200
"""Characters of a runtime error message put in a violation."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_NAMES = frozenset(
    {
        # Constants and operators of the expression language.
        *("true", "false", "none", "True", "False", "None"),
        *("and", "or", "not", "in", "is", "if", "else"),
        # Names the runtime defines inside loops, macros, call blocks and blocks.
        *("loop", "self", "super", "caller", "varargs", "kwargs"),
        # Globals, ours and Jinja's defaults.
        *("range", "dict", "namespace", "lipsum", "cycler", "joiner"),
    }
)
"""Variable names a template could not read, or would read as something else."""


class VariableType(StrEnum):
    """The type of one template variable."""

    UNSPECIFIED = "unspecified"
    """Not set; `check_version` rejects it."""
    STRING = "string"
    """A string, at most `max_length` characters when that is set."""
    INTEGER = "integer"
    """A whole number; a JSON number without a fractional part (`3.0`) is accepted."""
    NUMBER = "number"
    """Any finite number."""
    BOOLEAN = "boolean"
    """true or false."""
    ENUM = "enum"
    """One of the variable's `enum_values`."""
    STRING_LIST = "string_list"
    """A list of at most `max_items` strings of at most `max_length` characters each."""


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """One declared template variable (`genai.prompt.v1.VariableSpec`).

    `default` is `None` when the variable has no default; `max_length` and `max_items` are
    0 for no limit.
    """

    name: str
    type: VariableType
    required: bool = False
    default: JsonValue = None
    enum_values: tuple[str, ...] = ()
    max_length: int = 0
    max_items: int = 0
    description: str = ""


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    """One chat message of a prompt version: a role and a Jinja2 template."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """One chat message after rendering."""

    role: str
    content: str


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def check_version(
    messages: Sequence[MessageTemplate],
    variables: Sequence[VariableSpec],
    *,
    field: str = "version",
    text_template: str = "",
) -> list[FieldViolation]:
    """Everything wrong with a version's templates and variable schema, or `[]`.

    A version is a chat prompt (`messages`) or a text prompt (`text_template`, one template
    of raw prompt text): exactly one of the two is set. Field paths start with `field`:
    `version.messages[0].content`, `version.text_template`, `version.variables[2].name`,
    `version.variables[2].default_value`.
    """
    violations: list[FieldViolation] = []
    declared: dict[str, int] = {}
    for index, spec in enumerate(variables):
        path = f"{field}.variables[{index}]"
        violations += _check_variable(spec, path)
        if spec.name in declared:
            violations.append(
                FieldViolation(
                    f"{path}.name", f"duplicate of {field}.variables[{declared[spec.name]}]"
                )
            )
        else:
            declared[spec.name] = index

    # (field path, template) of every template of the version.
    templates: list[tuple[str, str]] = []
    if text_template:
        if messages:
            violations.append(
                FieldViolation(
                    f"{field}.text_template",
                    "set either messages (a chat prompt) or text_template (a text prompt), "
                    "not both",
                )
            )
            return violations
        templates.append((f"{field}.text_template", text_template))
    elif not messages:
        violations.append(
            FieldViolation(
                f"{field}.messages",
                "at least one message is required (or a text_template, for a text prompt)",
            )
        )
    elif len(messages) > MAX_MESSAGES:
        violations.append(
            FieldViolation(f"{field}.messages", f"at most {MAX_MESSAGES} messages are allowed")
        )
    elif sum(len(m.content) for m in messages) > MAX_VERSION_TEMPLATE_CHARS:
        # Compiling is the costly part of a check (about 0.5 s per dense 100,000 characters):
        # bound the whole version, not just each template.
        violations.append(
            FieldViolation(
                f"{field}.messages",
                f"at most {MAX_VERSION_TEMPLATE_CHARS} template characters in all",
            )
        )
        return violations
    for index, message in enumerate(messages[:MAX_MESSAGES]):
        path = f"{field}.messages[{index}]"
        if message.role not in CHAT_ROLES:
            violations.append(
                FieldViolation(f"{path}.role", "must be one of " + ", ".join(CHAT_ROLES))
            )
        if not message.content:
            violations.append(FieldViolation(f"{path}.content", "required"))
            continue
        templates.append((f"{path}.content", message.content))
    referenced: set[str] = set()
    templates_ok = True
    for path, source in templates:
        if len(source) > MAX_TEMPLATE_CHARS:
            violations.append(FieldViolation(path, f"longer than {MAX_TEMPLATE_CHARS} characters"))
            templates_ok = False
            continue
        try:
            compiled = _compile(source)
        except _InvalidTemplate as e:
            violations += [FieldViolation(path, problem) for problem in e.problems]
            templates_ok = False
            continue
        referenced |= compiled.references.keys()
        for name, line in sorted(compiled.references.items()):
            if name not in declared:
                violations.append(
                    FieldViolation(path, _at(line, f"variable {name!r} is not declared"))
                )
    if templates_ok and templates:
        where = "the text template" if text_template else "any message"
        for name, index in declared.items():
            if name and name not in referenced:
                violations.append(
                    FieldViolation(
                        f"{field}.variables[{index}].name",
                        f"variable {name!r} is not referenced by {where}",
                    )
                )
    return violations


def _check_variable(spec: VariableSpec, path: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    name = spec.name
    if not name:
        out.append(FieldViolation(f"{path}.name", "required"))
    elif len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        out.append(
            FieldViolation(
                f"{path}.name",
                "must be a letter or '_', then letters, digits or '_'; "
                f"at most {MAX_NAME_CHARS} characters",
            )
        )
    elif name in _RESERVED_NAMES:
        out.append(FieldViolation(f"{path}.name", f"{name!r} is reserved by the template language"))

    kind = spec.type
    if kind not in _COERCERS:
        out.append(FieldViolation(f"{path}.type", "required"))

    if kind is VariableType.ENUM:
        values = spec.enum_values
        if not values:
            out.append(FieldViolation(f"{path}.enum_values", "required for enum variables"))
        elif len(values) > MAX_ENUM_VALUES:
            out.append(FieldViolation(f"{path}.enum_values", f"at most {MAX_ENUM_VALUES} values"))
        seen: set[str] = set()
        for i, value in enumerate(values[:MAX_ENUM_VALUES]):
            if not value:
                out.append(FieldViolation(f"{path}.enum_values[{i}]", "must not be empty"))
            elif value in seen:
                out.append(FieldViolation(f"{path}.enum_values[{i}]", f"duplicate {value!r}"))
            seen.add(value)
    elif spec.enum_values:
        out.append(FieldViolation(f"{path}.enum_values", "only allowed for enum variables"))

    if spec.max_length < 0:
        out.append(FieldViolation(f"{path}.max_length", "must not be negative"))
    elif spec.max_length and kind not in (VariableType.STRING, VariableType.STRING_LIST):
        out.append(FieldViolation(f"{path}.max_length", "only allowed for string and string_list"))
    if spec.max_items < 0:
        out.append(FieldViolation(f"{path}.max_items", "must not be negative"))
    elif spec.max_items and kind is not VariableType.STRING_LIST:
        out.append(FieldViolation(f"{path}.max_items", "only allowed for string_list"))

    if spec.default is not None:
        if spec.required:
            out.append(
                FieldViolation(f"{path}.default_value", "a required variable cannot have a default")
            )
        elif kind in _COERCERS:
            try:
                _coerce(spec, spec.default)
            except _BadValue as e:
                out.append(FieldViolation(f"{path}.default_value", e.description))

    if len(spec.description) > MAX_DESCRIPTION_CHARS:
        out.append(
            FieldViolation(f"{path}.description", f"at most {MAX_DESCRIPTION_CHARS} characters")
        )
    return out


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


class _BadValue(Exception):
    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def _coerce(spec: VariableSpec, value: object) -> object:
    """The value the template sees for `value`, or `_BadValue`."""
    coercer = _COERCERS.get(spec.type)
    if coercer is None:
        raise _BadValue("the variable has no type")
    return coercer(spec, value)


def _coerce_string(spec: VariableSpec, value: object) -> object:
    if not isinstance(value, str):
        raise _BadValue("must be a string")
    if spec.max_length > 0 and len(value) > spec.max_length:
        raise _BadValue(f"longer than {spec.max_length} characters")
    return str(value)


def _coerce_integer(spec: VariableSpec, value: object) -> object:
    if isinstance(value, bool):
        raise _BadValue("must be an integer, not a boolean")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _BadValue("must be an integer")


def _coerce_number(spec: VariableSpec, value: object) -> object:
    if isinstance(value, bool):
        raise _BadValue("must be a number, not a boolean")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return float(value)
    raise _BadValue("must be a finite number")


def _coerce_boolean(spec: VariableSpec, value: object) -> object:
    if not isinstance(value, bool):
        raise _BadValue("must be true or false")
    return value


def _coerce_enum(spec: VariableSpec, value: object) -> object:
    if not isinstance(value, str):
        raise _BadValue("must be a string")
    if value not in spec.enum_values:
        shown = ", ".join(repr(v) for v in spec.enum_values[:10])
        more = ", ..." if len(spec.enum_values) > 10 else ""
        raise _BadValue(f"must be one of {shown}{more}")
    return str(value)


def _coerce_string_list(spec: VariableSpec, value: object) -> object:
    if not isinstance(value, list | tuple):
        raise _BadValue("must be a list of strings")
    if spec.max_items > 0 and len(value) > spec.max_items:
        raise _BadValue(f"more than {spec.max_items} items")
    items: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _BadValue(f"item {index} must be a string")
        if spec.max_length > 0 and len(item) > spec.max_length:
            raise _BadValue(f"item {index} is longer than {spec.max_length} characters")
        items.append(str(item))
    return items


_COERCERS: dict[VariableType, Callable[[VariableSpec, object], object]] = {
    VariableType.STRING: _coerce_string,
    VariableType.INTEGER: _coerce_integer,
    VariableType.NUMBER: _coerce_number,
    VariableType.BOOLEAN: _coerce_boolean,
    VariableType.ENUM: _coerce_enum,
    VariableType.STRING_LIST: _coerce_string_list,
}


def _template_values(
    variables: Sequence[VariableSpec], values: Mapping[str, object], field: str
) -> dict[str, object]:
    """The template's variables from a request's values; `InvalidArgument` lists every bad one."""
    specs = {spec.name: spec for spec in variables}
    violations = [
        FieldViolation(f"{field}.{str(name)[: MAX_NAME_CHARS * 2]}", "is not a declared variable")
        for name in sorted(str(name) for name in values)
        if name not in specs
    ]
    context: dict[str, object] = {}
    for name, spec in specs.items():
        value = values.get(name)
        if value is None:
            if spec.required:
                violations.append(FieldViolation(f"{field}.{name}", "required"))
                continue
            if spec.default is None:
                continue
            value = spec.default
        try:
            context[name] = _coerce(spec, value)
        except _BadValue as e:
            violations.append(FieldViolation(f"{field}.{name}", e.description))
    if violations:
        raise InvalidArgument(violations=violations, reason=reasons.VARIABLE_INVALID)
    return context


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def render(
    messages: Sequence[MessageTemplate],
    variables: Sequence[VariableSpec],
    values: Mapping[str, object],
    *,
    values_field: str = "variables",
    messages_field: str = "messages",
) -> list[RenderedMessage]:
    """Renders every message with `values` checked against `variables`.

    Raises `InvalidArgument`: with one violation per bad value (`variables.<name>`: unknown,
    missing, wrong type or out of bounds), all at once; or with one violation naming the
    message (`messages[<i>].content`) whose template does not compile or fails at render
    time (undefined variable, sandbox violation, budget exhausted, output too large, ...).
    """
    sources = [(f"{messages_field}[{i}].content", m.content) for i, m in enumerate(messages)]
    texts = _render_all(sources, variables, values, values_field)
    return [RenderedMessage(m.role, text) for m, text in zip(messages, texts, strict=True)]


def render_text(
    text_template: str,
    variables: Sequence[VariableSpec],
    values: Mapping[str, object],
    *,
    values_field: str = "variables",
    text_field: str = "text_template",
) -> str:
    """Renders a text prompt's template with `values` checked against `variables`: the same
    sandbox, budget and errors as `render`, the template's violations naming `text_field`."""
    return _render_all([(text_field, text_template)], variables, values, values_field)[0]


def _render_all(
    sources: Sequence[tuple[str, str]],
    variables: Sequence[VariableSpec],
    values: Mapping[str, object],
    values_field: str,
) -> list[str]:
    """Every template of `sources` (field path, template), rendered within one budget."""
    context = _template_values(variables, values, values_field)
    compiled: list[Template] = []
    violations: list[FieldViolation] = []
    for field, source in sources:
        try:
            compiled.append(_compile(source).template)
        except _InvalidTemplate as e:
            violations += [FieldViolation(field, problem) for problem in e.problems]
    if violations:
        raise InvalidArgument(violations=violations, reason=reasons.TEMPLATE_INVALID)

    budget = _Budget(
        steps=MAX_RENDER_STEPS,
        work=MAX_RENDER_WORK,
        output=MAX_OUTPUT_CHARS,
        deadline=time.monotonic() + MAX_RENDER_SECONDS,
    )
    token = _BUDGET.set(budget)
    try:
        rendered: list[str] = []
        for (field, _source), template in zip(sources, compiled, strict=True):
            try:
                rendered.append(_generate(template, context, budget))
            except Exception as e:  # any failure of a template is the template's fault
                raise InvalidArgument(
                    violations=[FieldViolation(field, _describe(e))],
                    reason=reasons.TEMPLATE_INVALID,
                ) from None
        return rendered
    finally:
        _BUDGET.reset(token)


def _generate(template: Template, context: dict[str, object], budget: "_Budget") -> str:
    parts: list[str] = []
    chunks = template.generate(context)
    try:
        for chunk in chunks:
            budget.emit(len(chunk))
            parts.append(chunk)
    finally:
        if isinstance(chunks, Generator):
            chunks.close()
    return "".join(parts)


def _describe(error: Exception) -> str:
    """A short description of a render failure that shows no Python internals."""
    if isinstance(error, _RenderLimit | TemplateError):
        text = (error.message if isinstance(error, TemplateError) else str(error)) or "error"
    elif isinstance(error, RecursionError):
        text = "too deeply nested (recursion limit reached)"
    elif isinstance(error, MemoryError):
        text = "out of memory"
    else:
        text = f"{type(error).__name__}: {error}"
    text = _REPR.sub("<object>", " ".join(text.split()))
    if len(text) > _MAX_DESCRIPTION:
        text = text[: _MAX_DESCRIPTION - 3] + "..."
    return _at(_template_line(error), text)


_REPR = re.compile(r"<[A-Za-z_][^<>]*>")
"""Object reprs (`<function f at 0x...>`) in error messages, which are not shown."""


def _template_line(error: BaseException) -> int | None:
    """The template line an error was raised at: Jinja rewrites tracebacks to template lines."""
    line = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _at(line: int | None, text: str) -> str:
    return f"line {line}: {text}" if line else text


# ---------------------------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------------------------


class _RenderLimit(Exception):
    """A template exceeded a bound; the message is shown to the caller."""


@dataclass(slots=True)
class _Budget:
    """What is left of one render's allowance."""

    steps: int
    work: int
    output: int
    deadline: float

    def step(self, count: int = 1) -> None:
        self.steps -= count
        if self.steps < 0:
            raise _RenderLimit(
                f"the template exceeds its budget of {MAX_RENDER_STEPS} steps "
                "(loop iterations, calls and range items)"
            )
        if time.monotonic() > self.deadline:
            raise _RenderLimit(f"the template takes longer than {MAX_RENDER_SECONDS:g} seconds")

    def charge(self, size: int) -> None:
        self.work -= size
        if self.work < 0:
            raise _RenderLimit(
                f"the template builds more than {MAX_RENDER_WORK} characters of text and lists"
            )

    def emit(self, size: int) -> None:
        self.output -= size
        if self.output < 0:
            raise _RenderLimit(f"the rendered prompt exceeds {MAX_OUTPUT_CHARS} characters")
        self.charge(size)


_BUDGET: ContextVar[_Budget] = ContextVar("prompt_template_budget")


def _budget() -> _Budget:
    """The running render's budget. Outside a render (Jinja folding constants while compiling)
    this raises, so that nothing is evaluated at compile time."""
    try:
        return _BUDGET.get()
    except LookupError:
        raise _RenderLimit("evaluated outside a render") from None


def _check_size(size: int) -> int:
    if size > MAX_VALUE_SIZE:
        raise _RenderLimit(f"a value would exceed {MAX_VALUE_SIZE} characters or items")
    return size


def _printed_size(value: object) -> int:
    """About how many characters `str(value)` has; raises for values that may not be printed
    (undefined, functions, ...) and for values larger than `MAX_VALUE_SIZE`."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif item is None or isinstance(item, bool | float | range):
            total += 24
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, Undefined):
            str(item)  # raises UndefinedError
            raise _RenderLimit("undefined value")
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 * len(item) + 2
            _check_size(total)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 4 * len(item) + 2
            _check_size(total)
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            kind = "a generator (use |list)" if isinstance(item, Iterator) else "this value"
            raise _RenderLimit(f"cannot print {kind}: only strings, numbers, booleans and lists")
        _check_size(total)
    return total


def _as_text(value: object) -> str:
    if type(value) is str:
        _check_size(len(value))
        return value
    _printed_size(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Sandbox
# ---------------------------------------------------------------------------------------------

_STR_ATTRIBUTES = frozenset(
    {
        *("capitalize", "casefold", "count", "endswith", "find", "index", "lower", "lstrip"),
        *("partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex"),
        *("rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip"),
        *("swapcase", "title", "upper", "isalnum", "isalpha", "isascii", "isdecimal"),
        *("isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace"),
        *("istitle", "isupper"),
    }
)
_DICT_ATTRIBUTES = frozenset({"get", "items", "keys", "values"})
_SEQUENCE_ATTRIBUTES = frozenset({"count", "index"})
_LOOP_ATTRIBUTES = frozenset(
    {
        *("index", "index0", "revindex", "revindex0", "first", "last", "length", "depth"),
        *("depth0", "previtem", "nextitem", "cycle", "changed"),
    }
)
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?")


def _check_percent_format(template: str, args: object) -> None:
    """Bounds `template % args` before it runs: widths, precisions and argument sizes."""
    size = len(template)
    for match in _PERCENT_SPEC.finditer(template):
        for number in match.group(1, 2):
            if not number:
                continue
            if number == "*" or len(number) > 4 or int(number) > MAX_FORMAT_WIDTH:
                raise _RenderLimit(f"% widths and precisions are limited to {MAX_FORMAT_WIDTH}")
            size += int(number)
    _check_size(size + _printed_size(args))


def _range(*args: int) -> range:
    items = range(*args)
    if len(items) > MAX_RANGE:
        raise _RenderLimit(f"range() is limited to {MAX_RANGE} items")
    _budget().step(len(items))
    return items


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox prompt templates run in (see the module docstring)."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(
            autoescape=False,
            keep_trailing_newline=True,
            undefined=_Undefined,
            finalize=_finalize,
            optimized=False,
            auto_reload=False,
        )
        self.globals.clear()
        self.globals.update(range=_range, dict=dict, namespace=Namespace)
        self.filters = {name: _metered(f) for name, f in _filters().items()}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """Allow-list: see the module docstring."""
        if attr.startswith("_"):
            return False
        if isinstance(obj, str):
            return attr in _STR_ATTRIBUTES
        if isinstance(obj, dict):
            return attr in _DICT_ATTRIBUTES
        if isinstance(obj, list | tuple):
            return attr in _SEQUENCE_ATTRIBUTES
        if isinstance(obj, LoopContext):
            return attr in _LOOP_ATTRIBUTES
        return isinstance(obj, Namespace)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`obj.attribute` in a template; on an undefined value, the undefined error."""
        if isinstance(obj, Undefined):
            obj._fail_with_undefined_error()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """`obj[argument]` in a template; on an undefined value, the undefined error."""
        if isinstance(obj, Undefined):
            obj._fail_with_undefined_error()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Replaces `str.replace` with a size-checked version; `format` is not allowed at all."""
        owner = getattr(value, "__self__", None)
        if (
            isinstance(value, types.MethodType | types.BuiltinMethodType)
            and isinstance(owner, str)
            and value.__name__ == "replace"
        ):
            return functools.partial(_replace, owner)
        return None

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Counts the call against the budget and charges what it builds."""
        budget = _budget()
        budget.step(MACRO_CALL_STEPS if isinstance(obj, Macro) else 1)
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            budget.charge(_check_size(len(result)))
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """`+`, `*`, `**` and `%`, bounded in the size of what they build."""
        budget = _budget()
        budget.step()
        if operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                budget.charge(_check_size(len(left) + len(right)))
        elif operator == "*":
            _check_multiply(left, right, budget)
        elif operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and abs(left) > 1
                and left.bit_length() * right > MAX_INT_BITS
            ):
                raise _RenderLimit(f"a number would exceed {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left, right)
        return self.binop_table[operator](left, right)

    def loop_guard(self, iterable: Iterable[Any], literal_chars: int) -> Iterator[Any]:
        """Wraps every `for` loop's iterable: each item is a step, and the loop body's literal
        text is charged per item (it may be captured by a macro or `set` block)."""
        budget = _budget()
        for item in iterable:
            budget.step()
            budget.charge(literal_chars)
            yield item

    def concat_guard(self, *parts: Any) -> str:
        """The `~` operator, size-checked."""
        texts = [_as_text(part) for part in parts]
        _budget().charge(_check_size(sum(len(text) for text in texts)))
        return "".join(texts)


def _check_multiply(left: Any, right: Any, budget: _Budget) -> None:
    if isinstance(left, int) and isinstance(right, str | list | tuple):
        left, right = right, left
    if isinstance(left, str | list | tuple) and isinstance(right, int):
        budget.charge(_check_size(len(left) * max(right, 0)))
    elif (
        isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > MAX_INT_BITS
    ):
        raise _RenderLimit(f"a number would exceed {MAX_INT_BITS} bits")


class _Undefined(StrictUndefined):
    """Strict, except that an undefined value is false in `{% if %}`."""

    __slots__ = ()

    def __bool__(self) -> bool:  # type: ignore[override]
        return False


@pass_context
def _finalize(context: Context, value: Any) -> str:
    """Every `{{ ... }}`: only data prints, within bounds."""
    text = _as_text(value)
    _budget().charge(len(text))
    return text


def _replace(value: Any, old_value: Any, new_value: Any, count: Any = None) -> str:
    """`str.replace` and the `replace` filter, checked for the size of the result first."""
    text, old, new = str(value), str(old_value), str(new_value)
    limit = -1 if count is None else int(count)
    hits = len(text) + 1 if not old else text.count(old)
    if limit >= 0:
        hits = min(hits, limit)
    _check_size(len(text) + hits * (len(new) - len(old)))
    return text.replace(old, new, limit)


def _filters() -> dict[str, Callable[..., Any]]:
    """The allowed filters: Jinja's own, with the ones that can grow their input bounded."""
    plain = (
        *("abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape"),
        *("filesizeformat", "first", "float", "groupby", "int", "items", "last", "length"),
        *("list", "lower", "map", "max", "min", "reject", "rejectattr", "reverse"),
        *("select", "selectattr", "sort", "striptags", "title", "trim", "truncate", "unique"),
        *("upper", "urlencode", "wordcount"),
    )
    chosen: dict[str, Callable[..., Any]] = {name: jinja_filters.FILTERS[name] for name in plain}

    def center(value: Any, width: int = 80) -> str:
        _check_size(int(width))
        return str(value).center(width)

    def indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
        text = str(value)
        pad = len(width) if isinstance(width, str) else int(width)
        if pad > MAX_CHUNK:
            raise _RenderLimit(f"indent is limited to {MAX_CHUNK}")
        _check_size(len(text) + (text.count("\n") + 1) * pad)
        return jinja_filters.do_indent(text, width, first, blank)

    @pass_environment
    def wordwrap(environment: Any, value: Any, width: int = 79, *args: Any, **kwargs: Any) -> str:
        text = str(value)
        wrap = kwargs.get("wrapstring", args[1] if len(args) > 1 else None)
        if not 0 < int(width) <= MAX_CHUNK or len(wrap or "") > 16:
            raise _RenderLimit(f"wordwrap needs a width up to {MAX_CHUNK} and a short wrapstring")
        _check_size(len(text) * (1 + len(wrap or "\n")))
        return jinja_filters.do_wordwrap(environment, text, width, *args, **kwargs)

    @pass_environment
    def join(environment: Any, value: Iterable[Any], d: Any = "", attribute: Any = None) -> str:
        items = list(value)
        if attribute is not None:
            get = jinja_filters.make_attrgetter(environment, attribute)
            items = [get(item) for item in items]
        separator = _as_text(d)
        _check_size(len(separator) * len(items))
        texts = [_as_text(item) for item in items]
        _check_size(len(separator) * len(items) + sum(len(text) for text in texts))
        return separator.join(texts)

    def format_(value: Any, *args: Any, **kwargs: Any) -> str:
        if args and kwargs:
            raise _RenderLimit("format takes either positional or keyword arguments, not both")
        template = str(value)
        arguments: object = kwargs or args
        _check_percent_format(template, arguments)
        return template % arguments

    def string(value: Any) -> str:
        return _as_text(value)

    def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        if not 0 < int(linecount) <= MAX_CHUNK:
            raise _RenderLimit(f"batch sizes are limited to 1..{MAX_CHUNK}")
        return jinja_filters.do_batch(value, linecount, fill_with)

    def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
        if not 0 < int(slices) <= MAX_CHUNK:
            raise _RenderLimit(f"slice counts are limited to 1..{MAX_CHUNK}")
        return jinja_filters.do_slice(value, slices, fill_with)

    @pass_environment
    def sum_(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        if isinstance(start, bool) or not isinstance(start, int | float):
            raise _RenderLimit("sum adds numbers only")
        return jinja_filters.sync_do_sum(environment, iterable, attribute, start)

    @pass_context
    def tojson(context: Context, value: Any, indent: int | None = None) -> Any:
        if indent is not None and not 0 <= int(indent) <= 8:
            raise _RenderLimit("tojson indent is limited to 8")
        _printed_size(value)
        return jinja_filters.do_tojson(context.eval_ctx, value, indent)

    def round_(value: Any, precision: int = 0, method: str = "common") -> Any:
        if not -20 <= int(precision) <= 20:
            raise _RenderLimit("round precision is limited to -20..20")
        return jinja_filters.do_round(value, precision, method)  # type: ignore[arg-type]

    chosen.update(
        center=center,
        round=round_,
        indent=indent,
        wordwrap=wordwrap,
        join=join,
        format=format_,
        string=string,
        batch=batch,
        slice=slice_,
        sum=sum_,
        tojson=tojson,
        replace=_replace,
    )
    return chosen


def _metered(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that counts as a step and charges the size of its input and output.

    `functools.wraps` copies Jinja's `pass_context`/`pass_environment` marks too.
    """

    @functools.wraps(function)
    def metered(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        for arg in args:
            if isinstance(arg, str | list | tuple | dict):
                budget.charge(len(arg))
        result = function(*args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            budget.charge(_check_size(len(result)))
        return result

    return metered


# ---------------------------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------------------------


class _InvalidTemplate(Exception):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class _Compiled:
    template: Template
    references: Mapping[str, int]
    """Variables the template reads from its context, with the first line reading each."""


class _Instrument(NodeTransformer):
    """Routes every `for` loop's iterable and every `~` through the environment's guards."""

    def __init__(self) -> None:
        self.literal = 0
        """Characters of template text visited so far."""

    def visit_TemplateData(self, node: nodes.TemplateData) -> nodes.Node:
        self.literal += len(node.data)
        return node

    def visit_For(self, node: nodes.For) -> nodes.Node:
        before = self.literal
        self.generic_visit(node)
        body = nodes.Const(self.literal - before)
        iterable = cast(nodes.Expr, node.iter)
        node.iter = _guard_call("loop_guard", [iterable, body], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _guard_call("concat_guard", list(node.nodes), node.lineno)


def _guard_call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(
        nodes.EnvironmentAttribute(name, lineno=lineno), args, [], None, None, lineno=lineno
    )


_UNSUPPORTED: Mapping[type[nodes.Node], str] = {
    nodes.Extends: "{% extends %} is not supported",
    nodes.Include: "{% include %} is not supported",
    nodes.Import: "{% import %} is not supported",
    nodes.FromImport: "{% from ... import %} is not supported",
}


def _scan(ast: nodes.Template) -> tuple[list[str], dict[str, int]]:
    """Unsupported statements, and the first line each name is loaded at (without recursion:
    a template can nest deeper than Python's stack)."""
    problems: list[tuple[int, str]] = []
    lines: dict[str, int] = {}
    stack: list[nodes.Node] = [ast]
    while stack:
        node = stack.pop()
        if type(node) in _UNSUPPORTED:
            problems.append((node.lineno, _UNSUPPORTED[type(node)]))
        elif isinstance(node, nodes.For) and node.recursive:
            problems.append((node.lineno, "recursive loops are not supported"))
        elif (isinstance(node, nodes.Getattr) and node.attr.startswith("_")) or (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
            and node.arg.value.startswith("_")
        ):
            problems.append((node.lineno, "attributes starting with '_' are not accessible"))
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            lines[node.name] = min(node.lineno, lines.get(node.name, node.lineno))
        stack.extend(node.iter_child_nodes())
    return [_at(line, text) for line, text in sorted(set(problems))], lines


@functools.lru_cache(maxsize=TEMPLATE_CACHE_SIZE)
def _compile(source: str) -> _Compiled:
    """Parses, checks, instruments and compiles one template; `_InvalidTemplate` if it can't."""
    try:
        ast = _ENVIRONMENT.parse(source)
        problems, lines = _scan(ast)
        if problems:
            raise _InvalidTemplate(problems)
        names = meta.find_undeclared_variables(ast)
        references = {name: lines.get(name, 0) for name in names}
        instrumented = _Instrument().visit(ast)
        instrumented.set_environment(_ENVIRONMENT)
        template = _ENVIRONMENT.from_string(instrumented)
    except _InvalidTemplate:
        raise
    except TemplateSyntaxError as e:
        raise _InvalidTemplate([_at(e.lineno, e.message or "invalid template")]) from None
    except Exception:  # RecursionError, MemoryError: absurdly nested or long
        raise _InvalidTemplate(["the template is too deeply nested or too complex"]) from None
    return _Compiled(template, types.MappingProxyType(references))


_ENVIRONMENT = _PromptEnvironment()
