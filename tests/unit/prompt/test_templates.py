"""Prompt templates: version checks, typed variables, sandboxed and bounded rendering."""

import time
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import FieldViolation, InvalidArgument
from services.prompt.core import templates
from services.prompt.core.templates import (
    MAX_VERSION_TEMPLATE_CHARS,
    MessageTemplate,
    RenderedMessage,
    VariableSpec,
    VariableType,
    check_version,
    render,
)

T = VariableType


def user(content: str) -> MessageTemplate:
    return MessageTemplate("user", content)


def pairs(violations: Sequence[FieldViolation]) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in violations]


def render_one(template: str, specs: Sequence[VariableSpec], values: Mapping[str, object]) -> str:
    return render([user(template)], specs, values)[0].content


def render_error(
    template: str, specs: Sequence[VariableSpec] = (), values: Mapping[str, object] | None = None
) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        render([user(template)], specs, values or {})
    return pairs(caught.value.violations)


def has(violations: list[tuple[str, str]], field: str, text: str) -> bool:
    return any(f == field and text in d for f, d in violations)


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------

ACCEPTED = [
    (VariableSpec("v", T.STRING), "hi", "hi"),
    (VariableSpec("v", T.STRING, max_length=2), "hi", "hi"),
    (VariableSpec("v", T.STRING), "", ""),
    (VariableSpec("v", T.INTEGER), 3.0, "3"),
    (VariableSpec("v", T.INTEGER), -7, "-7"),
    (VariableSpec("v", T.INTEGER), 1e15, "1000000000000000"),
    (VariableSpec("v", T.NUMBER), 2.5, "2.5"),
    (VariableSpec("v", T.NUMBER), 4, "4"),
    (VariableSpec("v", T.BOOLEAN), True, "True"),
    (VariableSpec("v", T.BOOLEAN), False, "False"),
    (VariableSpec("v", T.ENUM, enum_values=("a", "b")), "b", "b"),
    (VariableSpec("v", T.STRING_LIST), ["a", "b"], "['a', 'b']"),
    (VariableSpec("v", T.STRING_LIST), ("a",), "['a']"),
    (VariableSpec("v", T.STRING_LIST), [], "[]"),
    (VariableSpec("v", T.STRING_LIST, max_items=2, max_length=1), ["a", "b"], "['a', 'b']"),
]


@pytest.mark.parametrize(("spec", "value", "expected"), ACCEPTED)
def test_accepted_values_render(spec: VariableSpec, value: object, expected: str) -> None:
    assert render_one("{{ v }}", [spec], {"v": value}) == expected


def test_an_integral_float_reaches_the_template_as_an_int() -> None:
    spec = VariableSpec("v", T.INTEGER)
    assert render_one(
        "{{ v is integer }} {{ v // 2 }} {{ range(v)|list }}", [spec], {"v": 3.0}
    ) == ("True 1 [0, 1, 2]")


REJECTED = [
    (VariableSpec("v", T.STRING), 3, "must be a string"),
    (VariableSpec("v", T.STRING), ["a"], "must be a string"),
    (VariableSpec("v", T.STRING, max_length=2), "abc", "longer than 2 characters"),
    (VariableSpec("v", T.INTEGER), 3.5, "must be an integer"),
    (VariableSpec("v", T.INTEGER), True, "not a boolean"),
    (VariableSpec("v", T.INTEGER), "3", "must be an integer"),
    (VariableSpec("v", T.INTEGER), float("nan"), "must be an integer"),
    (VariableSpec("v", T.INTEGER), float("inf"), "must be an integer"),
    (VariableSpec("v", T.NUMBER), False, "not a boolean"),
    (VariableSpec("v", T.NUMBER), float("nan"), "finite number"),
    (VariableSpec("v", T.NUMBER), float("-inf"), "finite number"),
    (VariableSpec("v", T.NUMBER), "1.5", "finite number"),
    (VariableSpec("v", T.BOOLEAN), 1, "true or false"),
    (VariableSpec("v", T.BOOLEAN), "true", "true or false"),
    (VariableSpec("v", T.ENUM, enum_values=("a", "b")), "c", "must be one of 'a', 'b'"),
    (VariableSpec("v", T.ENUM, enum_values=("a", "b")), 1.0, "must be a string"),
    (VariableSpec("v", T.STRING_LIST), "ab", "list of strings"),
    (VariableSpec("v", T.STRING_LIST), ["a", 1.0], "item 1 must be a string"),
    (VariableSpec("v", T.STRING_LIST), [["a"]], "item 0 must be a string"),
    (VariableSpec("v", T.STRING_LIST, max_items=1), ["a", "b"], "more than 1 items"),
    (VariableSpec("v", T.STRING_LIST, max_length=1), ["a", "bc"], "item 1 is longer than 1"),
    (VariableSpec("v", T.UNSPECIFIED), "a", "no type"),
]


@pytest.mark.parametrize(("spec", "value", "description"), REJECTED)
def test_rejected_values_name_the_variable(
    spec: VariableSpec, value: object, description: str
) -> None:
    violations = render_error("{{ v }}", [spec], {"v": value})
    assert len(violations) == 1
    assert has(violations, "variables.v", description)


def test_every_bad_value_is_reported_at_once() -> None:
    specs = [
        VariableSpec("a", T.STRING, required=True),
        VariableSpec("b", T.INTEGER),
        VariableSpec("c", T.ENUM, enum_values=("x",)),
        VariableSpec("d", T.STRING),
    ]
    violations = render_error(
        "{{ a }}{{ b }}{{ c }}{{ d }}", specs, {"b": 1.5, "c": "y", "zz": 1, "yy": "q", "d": "ok"}
    )
    assert violations == [
        ("variables.yy", "is not a declared variable"),
        ("variables.zz", "is not a declared variable"),
        ("variables.a", "required"),
        ("variables.b", "must be an integer"),
        ("variables.c", "must be one of 'x'"),
    ]


def test_optional_variables_take_their_default() -> None:
    specs = [
        VariableSpec("n", T.INTEGER, default=2.0),
        VariableSpec("tags", T.STRING_LIST, default=["a", "b"]),
        VariableSpec("mood", T.ENUM, enum_values=("calm", "loud"), default="calm"),
    ]
    template = "{{ n + 1 }} {{ tags|join(',') }} {{ mood }}"
    assert render_one(template, specs, {}) == "3 a,b calm"
    assert render_one(template, specs, {"n": 5, "tags": [], "mood": "loud"}) == "6  loud"


def test_null_counts_as_not_supplied() -> None:
    specs = [VariableSpec("a", T.STRING, default="d"), VariableSpec("b", T.STRING, required=True)]
    assert render_error("{{ a }}{{ b }}", specs, {"a": None, "b": None}) == [
        ("variables.b", "required")
    ]
    assert render_one("{{ a }}{{ b }}", specs, {"a": None, "b": "x"}) == "dx"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% if x %}yes{% else %}no{% endif %}", "no"),
        ("{% if x is defined %}yes{% else %}no{% endif %}", "no"),
        ("{% if x is not defined %}none{% endif %}", "none"),
        ("{% if not x %}empty{% endif %}", "empty"),
        ("{{ x | default('fallback') }}", "fallback"),
        ("{{ x if x else 'other' }}", "other"),
    ],
)
def test_optional_variables_without_value_are_undefined_but_testable(
    template: str, expected: str
) -> None:
    assert render_one(template, [VariableSpec("x", T.STRING)], {}) == expected


@pytest.mark.parametrize(
    "template",
    ["{{ x }}", "a {{ x ~ 'b' }}", "{% for c in x %}{% endfor %}", "{{ x.upper() }}", "{{ [x] }}"],
)
def test_using_an_undefined_variable_is_an_error(template: str) -> None:
    violations = render_error(template, [VariableSpec("x", T.STRING)])
    assert violations == [("messages[0].content", "line 1: 'x' is undefined")]


def test_rendering_keeps_roles_order_and_trailing_newlines() -> None:
    messages = [
        MessageTemplate("system", "You are {{ persona }}.\n"),
        MessageTemplate("user", "{% for q in questions %}- {{ q }}\n{% endfor %}"),
        MessageTemplate("assistant", "OK"),
    ]
    specs = [
        VariableSpec("persona", T.STRING, required=True),
        VariableSpec("questions", T.STRING_LIST, required=True),
    ]
    assert render(messages, specs, {"persona": "kind", "questions": ["a?", "b?"]}) == [
        RenderedMessage("system", "You are kind.\n"),
        RenderedMessage("user", "- a?\n- b?\n"),
        RenderedMessage("assistant", "OK"),
    ]


def test_str_methods_and_filters_work() -> None:
    spec = VariableSpec("s", T.STRING)
    template = (
        "{{ s.upper() }}|{{ s.replace('a', 'o') }}|{{ s|replace('b', 'B') }}|"
        "{{ s.split('b') }}|{{ '%s-%03d' % (s, 7) }}|{{ '%s!'|format(s) }}|{{ s|center(7) }}|"
        "{{ [1, 2, 3]|sum }}|{{ (1, 'a')|tojson }}|{{ s|list|batch(2)|list }}|{{ 2.567|round(1) }}"
    )
    assert render_one(template, [spec], {"s": "abc"}) == (
        "ABC|obc|aBc|['a', 'c']|abc-007|abc!|  abc  |6|[1, \"a\"]|[['a', 'b'], ['c']]|2.6"
    )


def test_namespaces_and_macros_work() -> None:
    spec = VariableSpec("xs", T.STRING_LIST)
    template = (
        "{% macro item(x) %}<{{ x }}>{% endmacro %}"
        "{% set ns = namespace(n=0) %}"
        "{% for x in xs %}{{ item(x) }}{% set ns.n = ns.n + loop.index %}{% endfor %}{{ ns.n }}"
    )
    assert render_one(template, [spec], {"xs": ["a", "b", "c"]}) == "<a><b><c>6"


@pytest.mark.parametrize(
    ("template", "description"),
    [
        ("{{ 1 / n }}", "ZeroDivisionError"),
        ("{{ n + 'a' }}", "TypeError"),
        ("line\n{{ n|int + [] }}", "line 2: TypeError"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}{{ n }}", "recursion"),
        ("{{ range(n) }}{{ 'abc'.index('z') }}", "ValueError"),
        ("{{ dict(a=n).a.b }}", "has no attribute 'b'"),
        ("{{ [n]|map('nope')|list }}", "No filter named 'nope'"),
        ("{{ range }}{{ n }}", "cannot print"),
        ("{{ [n]|map('string') }}", "generator"),
    ],
)
def test_runtime_failures_become_invalid_argument_naming_the_message(
    template: str, description: str
) -> None:
    violations = render_error(template, [VariableSpec("n", T.INTEGER)], {"n": 0})
    assert len(violations) == 1
    assert violations[0][0] == "messages[0].content"
    assert description in violations[0][1]


def test_compiled_templates_are_cached() -> None:
    spec = VariableSpec("x", T.STRING)
    template = "cached {{ x }} " + str(time.monotonic())
    render_one(template, [spec], {"x": "a"})
    before = templates._compile.cache_info()
    assert render_one(template, [spec], {"x": "b"}).startswith("cached b")
    after = templates._compile.cache_info()
    assert after.hits == before.hits + 1
    assert after.misses == before.misses


# ---------------------------------------------------------------------------------------------
# check_version
# ---------------------------------------------------------------------------------------------

X = VariableSpec("x", T.STRING)


def test_a_valid_version_has_no_violations() -> None:
    messages = [
        MessageTemplate("system", "You answer in {{ language }}."),
        MessageTemplate(
            "user",
            "{% if context is defined %}Context: {{ context|join('\\n') }}\n{% endif %}"
            "{% for i in range(n) %}{{ i }}{% endfor %}{{ question }}{{ strict }}{{ temp }}",
        ),
    ]
    variables = [
        VariableSpec("language", T.ENUM, enum_values=("en", "fr"), default="en"),
        VariableSpec("context", T.STRING_LIST, max_items=5, max_length=100),
        VariableSpec("n", T.INTEGER, default=3.0),
        VariableSpec("question", T.STRING, required=True, max_length=1000),
        VariableSpec("strict", T.BOOLEAN, default=False),
        VariableSpec("temp", T.NUMBER, default=0.5, description="how creative"),
    ]
    assert check_version(messages, variables) == []


VARIABLE_RULES = [
    (VariableSpec("", T.STRING), "version.variables[0].name", "required"),
    (VariableSpec("1abc", T.STRING), "version.variables[0].name", "a letter or '_'"),
    (VariableSpec("a-b", T.STRING), "version.variables[0].name", "a letter or '_'"),
    (VariableSpec("é", T.STRING), "version.variables[0].name", "a letter or '_'"),
    (VariableSpec("a" * 65, T.STRING), "version.variables[0].name", "at most 64"),
    (VariableSpec("range", T.STRING), "version.variables[0].name", "reserved"),
    (VariableSpec("loop", T.STRING), "version.variables[0].name", "reserved"),
    (VariableSpec("true", T.STRING), "version.variables[0].name", "reserved"),
    (VariableSpec("none", T.STRING), "version.variables[0].name", "reserved"),
    (VariableSpec("and", T.STRING), "version.variables[0].name", "reserved"),
    (VariableSpec("caller", T.STRING), "version.variables[0].name", "reserved"),
    (VariableSpec("v", T.UNSPECIFIED), "version.variables[0].type", "required"),
    (VariableSpec("v", T.ENUM), "version.variables[0].enum_values", "required for enum"),
    (
        VariableSpec("v", T.ENUM, enum_values=tuple(str(i) for i in range(257))),
        "version.variables[0].enum_values",
        "at most 256",
    ),
    (
        VariableSpec("v", T.ENUM, enum_values=("a", "")),
        "version.variables[0].enum_values[1]",
        "must not be empty",
    ),
    (
        VariableSpec("v", T.ENUM, enum_values=("a", "a")),
        "version.variables[0].enum_values[1]",
        "duplicate",
    ),
    (
        VariableSpec("v", T.STRING, enum_values=("a",)),
        "version.variables[0].enum_values",
        "only allowed for enum",
    ),
    (VariableSpec("v", T.STRING, max_length=-1), "version.variables[0].max_length", "negative"),
    (
        VariableSpec("v", T.INTEGER, max_length=3),
        "version.variables[0].max_length",
        "only allowed for string",
    ),
    (
        VariableSpec("v", T.STRING_LIST, max_items=-1),
        "version.variables[0].max_items",
        "negative",
    ),
    (
        VariableSpec("v", T.STRING, max_items=3),
        "version.variables[0].max_items",
        "only allowed for string_list",
    ),
    (
        VariableSpec("v", T.STRING, required=True, default="a"),
        "version.variables[0].default_value",
        "required variable cannot have a default",
    ),
    (VariableSpec("v", T.INTEGER, default=1.5), "version.variables[0].default_value", "integer"),
    (VariableSpec("v", T.INTEGER, default=True), "version.variables[0].default_value", "boolean"),
    (
        VariableSpec("v", T.STRING, max_length=1, default="ab"),
        "version.variables[0].default_value",
        "longer than 1",
    ),
    (
        VariableSpec("v", T.ENUM, enum_values=("a",), default="b"),
        "version.variables[0].default_value",
        "one of",
    ),
    (
        VariableSpec("v", T.STRING_LIST, max_items=1, default=["a", "b"]),
        "version.variables[0].default_value",
        "more than 1 items",
    ),
    (
        VariableSpec("v", T.STRING, description="d" * 1025),
        "version.variables[0].description",
        "at most 1024",
    ),
]


@pytest.mark.parametrize(("spec", "field", "description"), VARIABLE_RULES)
def test_variable_rules(spec: VariableSpec, field: str, description: str) -> None:
    name = spec.name if templates._NAME.fullmatch(spec.name) else "x"
    violations = pairs(check_version([user("{{ " + name + " }}")], [spec]))
    assert has(violations, field, description), violations


def test_duplicate_variable_names() -> None:
    violations = pairs(check_version([user("{{ x }}")], [X, X]))
    assert violations == [("version.variables[1].name", "duplicate of version.variables[0]")]


MESSAGE_RULES = [
    ([], "version.messages", "at least one message"),
    ([user("{{ x }}")] * 65, "version.messages", "at most 64"),
    ([MessageTemplate("tool", "{{ x }}")], "version.messages[0].role", "system, user, assistant"),
    ([user("{{ x }}"), user("")], "version.messages[1].content", "required"),
    ([user("{{ x }}" + "a" * 100_000)], "version.messages[0].content", "longer than 100000"),
    ([user("hello\n{{ x }\n")], "version.messages[0].content", "line 2: unexpected '}'"),
    ([user("{% if x %}")], "version.messages[0].content", "line 1: Unexpected end of template"),
    ([user("{{ x|nope }}")], "version.messages[0].content", "No filter named 'nope'"),
    ([user("{{ x }}\n{{ y }}")], "version.messages[0].content", "line 2: variable 'y' is not"),
    ([user("{{ x }}{{ cycler }}")], "version.messages[0].content", "'cycler' is not declared"),
    ([user("{{ x }}{% include 'a' %}")], "version.messages[0].content", "include"),
    ([user("{{ x }}{% import 'a' as b %}")], "version.messages[0].content", "import"),
    ([user("{% extends x %}")], "version.messages[0].content", "extends"),
    (
        [user("{% for a in x recursive %}{{ loop(a) }}{% endfor %}")],
        "version.messages[0].content",
        "recursive loops",
    ),
    ([user("{{ x.__class__ }}")], "version.messages[0].content", "starting with '_'"),
    ([user("{{ x['__class__'] }}")], "version.messages[0].content", "starting with '_'"),
    (
        [user("{{ " + "(" * 5000 + "x" + ")" * 5000 + " }}")],
        "version.messages[0].content",
        "nested",
    ),
    ([user("{{ 1" + " + 1" * 5000 + " }}{{ x }}")], "version.messages[0].content", "nested"),
]


@pytest.mark.parametrize(("messages", "field", "description"), MESSAGE_RULES)
def test_message_rules(messages: list[MessageTemplate], field: str, description: str) -> None:
    violations = pairs(check_version(messages, [X]))
    assert has(violations, field, description), violations


def test_every_declared_variable_must_be_referenced() -> None:
    variables = [X, VariableSpec("unused", T.STRING), VariableSpec("also", T.INTEGER)]
    violations = pairs(check_version([user("{{ x }}")], variables))
    assert violations == [
        ("version.variables[1].name", "variable 'unused' is not referenced by any message"),
        ("version.variables[2].name", "variable 'also' is not referenced by any message"),
    ]


def test_references_in_any_message_count_and_set_variables_are_local() -> None:
    messages = [
        MessageTemplate("system", "{% set local = 1 %}{{ local }}{{ a }}"),
        MessageTemplate("user", "{% for item in b %}{{ item }}{{ loop.index }}{% endfor %}"),
    ]
    variables = [VariableSpec("a", T.STRING), VariableSpec("b", T.STRING_LIST)]
    assert check_version(messages, variables) == []


def test_the_field_prefix_is_configurable() -> None:
    assert pairs(check_version([user("{{ y }}")], [], field="prompt.version")) == [
        ("prompt.version.messages[0].content", "line 1: variable 'y' is not declared")
    ]


def test_render_reports_invalid_templates_per_message() -> None:
    messages = [user("{{ x }"), user("ok"), user("{% include 'a' %}")]
    with pytest.raises(InvalidArgument) as caught:
        render(messages, [X], {"x": "a"})
    assert [v.field for v in caught.value.violations] == [
        "messages[0].content",
        "messages[2].content",
    ]


# ---------------------------------------------------------------------------------------------
# Sandbox
# ---------------------------------------------------------------------------------------------

INJECTIONS = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ x.__class__.__base__.__subclasses__() }}",
    "{{ x['__class__'] }}",
    "{{ x|attr('__class__') }}",
    "{{ (x|attr('__cla' ~ 'ss__')).__name__ }}",
    "{{ x|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ range.__globals__ }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ config.items() }}{{ request.application.__globals__ }}",
    "{{ '{0.__class__}'.format(x) }}",
    "{{ '{0.__class__.__mro__}'.format_map({'0': x}) }}",
    "{{ x|attr('format')('{0.__class__}') }}",
    "{{ '%s'|format(range) }}",
    "{{ '%r' % (range,) }}",
    "{{ dict.mro() }}",
    "{{ dict.__subclasses__() }}",
    "{{ namespace(a=1) }}",
    "{{ [].append }}",
    "{% set l = [1] %}{{ l.append(2) }}{{ l }}",
    "{{ x.encode() }}",
    "{{ range }}",
    "{{ self }}",
    "{{ x|map('upper') }}",
    "{% for c in x %}{{ loop }}{% endfor %}",
    "{% macro m() %}{% endmacro %}{{ m }}",
    "{{ ''|attr('__class__')|attr('__subclasses__')() }}",
    "{{ x ~ range }}",
]
LEAKS = (
    *("<class", "<function", "<module", "<built-in", "<bound", "<generator", "0x", "os."),
    *("subprocess", "Popen", "builtins", "<Macro", "<Namespace", "<TemplateReference"),
)


def attempt(
    messages: Sequence[MessageTemplate], specs: Sequence[VariableSpec], values: Mapping[str, object]
) -> list[RenderedMessage] | InvalidArgument:
    """What `render` returns, or the `InvalidArgument` it raises."""
    try:
        return render(messages, specs, values)
    except InvalidArgument as e:
        return e


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_never_reaches_python_internals(payload: str) -> None:
    texts = [v.description for v in check_version([user(payload)], [X])]
    result = attempt([user(payload)], [X], {"x": "abc"})
    assert isinstance(result, InvalidArgument), result
    assert all(v.field == "messages[0].content" for v in result.violations)
    texts += [v.description for v in result.violations]
    for text in texts:
        assert not any(leak in text for leak in LEAKS), text


def test_mutating_a_list_is_refused() -> None:
    violations = render_error("{% set l = [1] %}{{ l.append(2) }}", [X], {"x": ""})
    assert "unsafe" in violations[0][1]


# ---------------------------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------------------------


def test_the_nested_range_bomb_fails_fast() -> None:
    template = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}"
    spec = VariableSpec("n", T.INTEGER)
    start = time.perf_counter()
    violations = render_error(template, [spec], {"n": 100000})
    assert violations[0][1] == "line 1: range() is limited to 10000 items"
    violations = render_error(template, [spec], {"n": 10000})
    assert "budget of 100000 steps" in violations[0][1]
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "template",
    [
        "{% for a in xs %}{% for b in xs %}{% for c in xs %}{% endfor %}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "{% for a in xs %}{% for b in xs %}{{ b }}{% endfor %}{% endfor %}",
    ],
)
def test_the_step_budget_stops_runaway_templates(template: str) -> None:
    start = time.perf_counter()
    violations = render_error(template, [VariableSpec("xs", T.STRING_LIST)], {"xs": ["a"] * 1000})
    assert "budget of 100000 steps" in violations[0][1]
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(10000) %}{{ s }}{% endfor %}",
        "{% for i in range(10000) %}" + "literal text " * 10 + "{% endfor %}",
        "{% for i in range(100) %}{{ s * 1000 }}{% endfor %}",
    ],
)
def test_the_output_is_capped(template: str) -> None:
    violations = render_error(template, [VariableSpec("s", T.STRING)], {"s": "x" * 200})
    assert "exceeds 1000000 characters" in violations[0][1]


def test_the_output_cap_spans_all_messages() -> None:
    spec = VariableSpec("s", T.STRING)
    message = user("{% for i in range(2500) %}{{ s }}{% endfor %}")  # 500 000 characters
    assert len(render([message, message], [spec], {"s": "x" * 200})) == 2
    with pytest.raises(InvalidArgument) as caught:
        render([message, message, message], [spec], {"s": "x" * 200})
    assert pairs(caught.value.violations) == [
        ("messages[2].content", "the rendered prompt exceeds 1000000 characters")
    ]


@pytest.mark.parametrize(
    ("template", "description"),
    [
        ("{{ 'a' * 10**9 }}", "exceed 1000000 characters"),
        ("{{ [s] * 10**9 }}", "exceed 1000000 characters"),
        ("{{ 2 ** 100000 }}", "4096 bits"),
        (
            "{% set ns = namespace(n=3) %}{% for i in range(30) %}{% set ns.n = ns.n * ns.n %}"
            "{% endfor %}",
            "4096 bits",
        ),
        ("{{ s|center(10**9) }}", "exceed"),
        ("{{ s.replace('', s * 2000) }}", "exceed"),
        ("{{ s|replace('x', s * 5000) }}", "exceed"),
        ("{{ '%999999999d' % 1 }}", "widths and precisions"),
        ("{{ '%*d' % (10**9, 1) }}", "widths and precisions"),
        ("{{ '%.9999s'|format(s) }}", "widths and precisions"),
        (
            "{% set ns = namespace(s=s) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}",
            "exceed",
        ),
        (
            "{% set ns = namespace(s=s) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
            "{% endfor %}",
            "exceed",
        ),
        ("{% set l = [s] * 1000 %}{{ l * 1000 }}", "exceed"),
        ("{% set l = [s * 1000] * 1000 %}{{ l|join }}", "exceed"),
        ("{% set l = [s * 1000] * 1000 %}{{ l }}", "exceed"),
        ("{% set l = [s * 1000] * 1000 %}{{ l|string }}", "exceed"),
        ("{% set l = [s * 1000] * 1000 %}{{ l|tojson }}", "exceed"),
        ("{{ [1]|slice(10**9)|list }}", "slice"),
        ("{{ [1]|batch(10**9, 'x')|list }}", "batch"),
        ("{{ 1.5|round(10**9, 'floor') }}", "round"),
        ("{{ s|indent(10**9) }}", "indent"),
        ("{{ s|wordwrap(10, wrapstring=s) }}", "wordwrap"),
        ("{{ [[s]] * 1000|sum(start=[]) }}", "numbers"),
        (
            "{% macro m() %}{% for i in range(10000) %}" + "x" * 2000 + "{% endfor %}{% endmacro %}"
            "{{ m()|length }}",
            "builds more than",
        ),
        (
            "{% set ns = namespace(l=[]) %}{% for i in range(9000) %}{% set ns.l = ns.l + [i] %}"
            "{% endfor %}",
            "builds more than",
        ),
    ],
)
def test_values_and_work_are_bounded(template: str, description: str) -> None:
    start = time.perf_counter()
    violations = render_error(template, [VariableSpec("s", T.STRING)], {"s": "x" * 1000})
    assert len(violations) == 1
    assert description in violations[0][1], violations
    assert time.perf_counter() - start < 1.0


def test_the_time_backstop_catches_work_the_step_budget_does_not_see(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(templates, "MAX_RENDER_SECONDS", 0.05)
    template = "{% for a in xs %}{% if 'zz' in s %}{% endif %}{% endfor %}"
    specs = [VariableSpec("xs", T.STRING_LIST), VariableSpec("s", T.STRING)]
    start = time.perf_counter()
    violations = render_error(template, specs, {"xs": ["a"] * 90_000, "s": "y" * 1_000_000})
    assert "takes longer than 0.05 seconds" in violations[0][1]
    assert time.perf_counter() - start < 1.0


def test_the_budget_is_per_render() -> None:
    template = "{% for i in range(9000) %}{% for j in range(n) %}{% endfor %}{% endfor %}"
    spec = VariableSpec("n", T.INTEGER)
    for _ in range(5):
        assert render_one(template, [spec], {"n": 0}) == ""


# ---------------------------------------------------------------------------------------------
# Fuzz
# ---------------------------------------------------------------------------------------------

FRAGMENTS = (
    *("{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", " ", "\n", "(", ")", "[", "]", ",", "|"),
    *(".", "=", "~", "+", "-", "*", "**", "/", "//", "%", "==", "<", "'a'", '"b"', "''", "0"),
    *("1", "3", "1e308", "99999999", "-1", "x", "n", "tags", "flag", "mood", "y", "loop"),
    *("for ", " in ", "endfor", "if ", "elif ", "else", "endif", "set ", "endset", "not ", "and "),
    *(" or ", " is ", "defined", "macro ", "m", "endmacro", "call ", "endcall", "caller", "filter"),
    *("endfilter", "with ", "endwith", "block ", "endblock", "raw", "endraw", "range(", "dict("),
    *("namespace(", "ns", "ns.a", "self", "super()", "upper", "join", "length", "default("),
    *("replace(", "format(", "center(", "batch(", "slice(", "sum", "list", "map(", "tojson"),
    *("round(", "indent(", "wordwrap(", "string", "sort", "attr(", "__class__", "__globals__"),
    *("_x", ".format(", ".upper()", ".split()", ".replace(", "items()", "recursive", "include"),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
NAMES = st.sampled_from(["x", "n", "tags", "flag", "mood", "y", "loop", "", "1a"]) | st.text(
    max_size=6
)
SPECS = st.builds(
    VariableSpec,
    name=NAMES,
    type=st.sampled_from(list(VariableType)),
    required=st.booleans(),
    default=JSON_VALUES,
    enum_values=st.lists(st.sampled_from(["a", "b", "", "calm"]), max_size=3).map(tuple),
    max_length=st.integers(-1, 5),
    max_items=st.integers(-1, 3),
    description=st.text(max_size=5),
)
FIXED_SPECS = [
    VariableSpec("x", T.STRING),
    VariableSpec("n", T.INTEGER, default=2),
    VariableSpec("tags", T.STRING_LIST, max_items=3),
    VariableSpec("flag", T.BOOLEAN),
    VariableSpec("mood", T.ENUM, enum_values=("calm", "loud"), default="calm"),
]
TEMPLATES = st.text(max_size=60) | st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    contents=st.lists(TEMPLATES, min_size=1, max_size=3),
    specs=st.one_of(st.just(FIXED_SPECS), st.lists(SPECS, max_size=3)),
    values=st.dictionaries(NAMES, JSON_VALUES, max_size=5),
)
def test_fuzz_check_and_render_only_ever_raise_invalid_argument(
    contents: list[str], specs: list[VariableSpec], values: dict[str, object]
) -> None:
    messages = [user(content) for content in contents]
    violations = check_version(messages, specs)
    assert all(isinstance(v, FieldViolation) for v in violations)
    result = attempt(messages, specs, values)
    if isinstance(result, InvalidArgument):
        assert result.violations
        assert all(v.field and v.description for v in result.violations)
    else:
        assert [m.role for m in result] == ["user"] * len(messages)
        assert all(isinstance(m.content, str) for m in result)


ATOMS = st.sampled_from(
    [
        *("x", "n", "tags", "flag", "mood", "1", "0", "-1", "2.5", "'ab'", "''", "[]", "none"),
        *("[1, 'a']", "{'k': 1}", "true", "range(3)", "range(n)", "loop", "ns", "ns.a", "m"),
        *("self", "caller", "10**9", "1e308", "'%s'", "'<b>'"),
    ]
)
OPERATORS = st.sampled_from(
    ["+", "-", "*", "/", "//", "%", "**", "~", "==", "<", "and", "or", "in", "is defined and"]
)
FILTER_NAMES = st.sampled_from([*sorted(templates._ENVIRONMENT.filters), "nope"])
METHOD_NAMES = st.sampled_from(
    ["upper", "split", "replace", "format", "items", "get", "index", "strip", "append", "mro"]
)


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    args = st.lists(inner, max_size=2).map(", ".join)
    return st.one_of(
        st.tuples(inner, OPERATORS, inner).map(lambda p: f"({p[0]} {p[1]} {p[2]})"),
        st.tuples(inner, FILTER_NAMES, args).map(lambda p: f"({p[0]}|{p[1]}({p[2]}))"),
        st.tuples(inner, METHOD_NAMES, args).map(lambda p: f"{p[0]}.{p[1]}({p[2]})"),
        st.tuples(inner, inner).map(lambda p: f"{p[0]}[{p[1]}]"),
        st.tuples(inner, inner, inner).map(lambda p: f"({p[0]} if {p[1]} else {p[2]})"),
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.tuples(st.sampled_from(["range", "dict", "namespace", "m", "loop.cycle"]), args).map(
            lambda p: f"{p[0]}({p[1]})"
        ),
    )


EXPRESSIONS = st.recursive(ATOMS, _compound, max_leaves=6)
STATEMENTS = st.one_of(
    EXPRESSIONS.map(lambda e: "{{ " + e + " }}"),
    st.tuples(EXPRESSIONS, EXPRESSIONS).map(
        lambda p: "{% for a in " + p[0] + " %}{{ " + p[1] + " }}{% endfor %}"
    ),
    st.tuples(EXPRESSIONS, EXPRESSIONS).map(
        lambda p: "{% if " + p[0] + " %}{{ " + p[1] + " }}{% endif %}"
    ),
    EXPRESSIONS.map(
        lambda e: "{% set ns = namespace(a=" + e + ") %}{% set ns.a = ns.a ~ " + e + " %}"
    ),
    EXPRESSIONS.map(lambda e: "{% macro m(a=1) %}{{ " + e + " }}{{ caller() }}{% endmacro %}"),
    EXPRESSIONS.map(lambda e: "{% call m() %}{{ " + e + " }}{% endcall %}"),
)


@settings(max_examples=200, deadline=None, database=None)
@given(
    statements=st.lists(STATEMENTS, min_size=1, max_size=4),
    values=st.fixed_dictionaries(
        {},
        optional={
            "x": st.text(max_size=5),
            "n": st.integers(-3, 5),
            "tags": st.lists(st.text(max_size=3), max_size=3),
            "flag": st.booleans(),
        },
    ),
)
def test_fuzz_expressions_never_leak_or_crash(
    statements: list[str], values: dict[str, object]
) -> None:
    messages = [user("".join(statements))]
    texts = [v.description for v in check_version(messages, FIXED_SPECS)]
    result = attempt(messages, FIXED_SPECS, values)
    if isinstance(result, InvalidArgument):
        texts += [v.description for v in result.violations]
    else:
        texts += [m.content for m in result]
    for text in texts:
        assert not any(leak in text for leak in LEAKS), text


def test_a_version_bounds_its_template_characters_in_all() -> None:
    each = MAX_VERSION_TEMPLATE_CHARS // 4 + 1
    messages = [MessageTemplate("user", "x" * each) for _ in range(4)]
    violations = check_version(messages, [])
    assert [v.field for v in violations] == ["version.messages"]
    assert "in all" in violations[0].description
