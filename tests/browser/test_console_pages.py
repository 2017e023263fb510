"""Every console page in a real browser against the shared `genai serve` (Triton, SmolLM2), at
both viewports: no serious or critical axe-core violation, a visible <h1>, no horizontal
overflow of the page itself (tables scroll in their own regions), a screenshot of each. Then
what a page must refuse or hide: another tenant's key sees none of the default tenant's
prompts, requests or reports (their URLs are 404 pages); a viewer is offered no action, and
its forged POSTs, carrying the session's valid CSRF token, are refused with 403 and change
nothing; the service's field errors stand next to the fields (with and without script); and
the session cookie and signing in and out behave.

The data is made once for the module over gRPC with the development tenant's platform-admin
key: a prompt `pages-chat` (two versions of the sample `chat` prompt, labels moved), a dataset
of two of `prompts/evals/chat-basics.jsonl`'s examples, an evaluation run of each version on
SmolLM2 (a report each, to compare), a running experiment with exposures and outcomes, and one
completion of the sample `chat` prompt (the request log's entry). Everything this module makes
is named `pages-...`: the flow module shares the same `genai serve`.
"""

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from genai.common.v1 import generation_pb2, routing_pb2
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2, experiment_service_pb2_grpc
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import json_format, struct_pb2
from playwright.sync_api import Page, expect

from services.prompt.files import parse_prompt_file
from tests.support.browser import (
    VIEWPORTS,
    Viewport,
    assert_accessible,
    base_url,
    save_screenshot,
    sign_in,
)
from tests.support.serve import ROOT, ServeProcess

pytestmark = [pytest.mark.browser, pytest.mark.system]

PROMPT: Final = "pages-chat"
DATASET: Final = "pages-chat-basics"
EXPERIMENT: Final = "pages-experiment"
TENANT: Final = "pages-tenant"
REQUEST_ID: Final = "pages-request-1"
SMOLLM2: Final = "smollm2-135m-instruct"
RPC_TIMEOUT: Final = 30.0
RUN_TIMEOUT: Final = 300.0
"""An evaluation of two examples on SmolLM2 through Triton takes seconds; CI's 2 cores are
slow."""
VERSION_1: Final = f"""\
name: {PROMPT}
description: The pages module's prompt (a copy of the sample chat prompt).
messages:
  - role: system
    content: |
      You are a concise, helpful assistant. Answer in plain text.
  - role: user
    content: "{{{{ message }}}}"
variables:
  - name: message
    type: string
    required: true
    max_length: 8000
parameters:
  temperature: 0
  max_tokens: 16
"""
VERSION_2: Final = VERSION_1.replace(
    "Answer in plain text.", "Answer in plain text, in one short sentence."
)
CSRF_INPUT: Final = 'input[name="csrf_token"]'
NO_OVERFLOW: Final = "() => document.documentElement.scrollWidth <= window.innerWidth + 1"


@dataclass(frozen=True)
class Seeded:
    """What the module made, by the names the page paths use."""

    prompt: str
    dataset: str
    experiment: str
    request_id: str
    baseline_run: str
    candidate_run: str
    baseline_report: str
    candidate_report: str


class Admin:
    """Sync gRPC stubs of the shared `genai serve`, calling with `api_key`."""

    def __init__(self, serve: ServeProcess, api_key: str, channel: grpc.Channel) -> None:
        self.serve = serve
        self.metadata = (("authorization", f"Bearer {api_key}"),)
        self.prompts = prompt_service_pb2_grpc.PromptServiceStub(channel)
        self.evaluations = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
        self.experiments = experiment_service_pb2_grpc.ExperimentServiceStub(channel)
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(channel)

    @property
    def call(self) -> dict[str, Any]:
        """Keyword arguments of one RPC: the key's metadata and a timeout."""
        return {"metadata": self.metadata, "timeout": RPC_TIMEOUT}

    def labels(self, prompt: str) -> dict[str, int]:
        found = self.prompts.GetPrompt(
            prompt_service_pb2.GetPromptRequest(name=prompt), **self.call
        )
        return dict(found.prompt.labels)

    def log_ids(self, prompt: str = "") -> list[str]:
        """Request ids of the caller's tenant's request log (the first 1,000), newest first."""
        page = self.gateway.ListRequestLogs(
            gateway_service_pb2.ListRequestLogsRequest(page_size=1000, prompt=prompt), **self.call
        )
        return [entry.request_id for entry in page.entries]

    def run_ids(self, prompt: str) -> list[str]:
        page = self.evaluations.ListEvaluationRuns(
            evaluation_service_pb2.ListEvaluationRunsRequest(page_size=100, prompt=prompt),
            **self.call,
        )
        return [run.id for run in page.runs]

    def new_key(self, role: gateway_pb2.Role, tenant_id: str = "default") -> str:
        created = self.gateway.CreateApiKey(
            gateway_service_pb2.CreateApiKeyRequest(
                tenant_id=tenant_id,
                display_name=f"pages-{gateway_pb2.Role.Name(role).lower()}",
                role=role,
            ),
            **self.call,
        )
        return created.secret


@pytest.fixture(scope="module")
def admin(console_serve: ServeProcess) -> Iterator[Admin]:
    with grpc.insecure_channel(console_serve.address) as channel:
        yield Admin(console_serve, console_serve.api_key, channel)


@pytest.fixture(scope="module")
def seeded(admin: Admin) -> Seeded:
    """The module's data (see the module docstring), made once."""
    _push_prompt(admin)
    _dataset(admin)
    baseline_run, baseline_report = _evaluate(admin, 1)
    candidate_run, candidate_report = _evaluate(admin, 2)
    _experiment(admin)
    _complete(admin)
    return Seeded(
        prompt=PROMPT,
        dataset=DATASET,
        experiment=EXPERIMENT,
        request_id=REQUEST_ID,
        baseline_run=baseline_run,
        candidate_run=candidate_run,
        baseline_report=baseline_report,
        candidate_report=candidate_report,
    )


def _push_prompt(admin: Admin) -> None:
    """`pages-chat` v1 and v2; production at v1, staging moved from v1 to v2 (a history to
    roll back)."""
    psb = prompt_service_pb2
    for number, text in enumerate((VERSION_1, VERSION_2), start=1):
        file = parse_prompt_file(text, Path(f"{PROMPT}.yaml"))
        if number == 1:
            admin.prompts.CreatePrompt(psb.CreatePromptRequest(prompt=file.prompt), **admin.call)
        version = file.version
        version.commit_message = "first version" if number == 1 else "one short sentence"
        admin.prompts.CreatePromptVersion(
            psb.CreatePromptVersionRequest(prompt=PROMPT, version=version), **admin.call
        )
    for label, number, expected in (("production", 1, 0), ("staging", 1, 0), ("staging", 2, 1)):
        admin.prompts.SetLabel(
            psb.SetLabelRequest(
                prompt=PROMPT,
                label=label,
                version=number,
                expected_version=expected,
                reason="pages module",
            ),
            **admin.call,
        )


def _dataset(admin: Admin) -> None:
    """Two examples of prompts/evals/chat-basics.jsonl (an answer must contain the
    reference)."""
    esb = evaluation_service_pb2
    lines = (ROOT / "prompts" / "evals" / "chat-basics.jsonl").read_text().splitlines()[:2]
    examples = [json_format.Parse(line, evaluation_pb2.Example()) for line in lines]
    admin.evaluations.CreateDataset(
        esb.CreateDatasetRequest(
            dataset=evaluation_pb2.Dataset(
                name=DATASET, prompt=PROMPT, description="two questions of chat-basics"
            )
        ),
        **admin.call,
    )
    admin.evaluations.AddExamples(
        esb.AddExamplesRequest(dataset=DATASET, examples=examples), **admin.call
    )


def _evaluate(admin: Admin, version: int) -> tuple[str, str]:
    """Runs version `version` of the prompt on the dataset on SmolLM2, reading
    StartEvaluationRun's stream to its report; returns the run's and the report's ids."""
    run = evaluation_pb2.EvaluationRun(
        prompt=PROMPT,
        prompt_version=version,
        dataset=DATASET,
        model=SMOLLM2,
        repeats=1,
        scorers=[evaluation_pb2.Scorer(name="answer", contains=evaluation_pb2.ContainsScorer())],
    )
    run_id = ""
    for event in admin.evaluations.StartEvaluationRun(
        evaluation_service_pb2.StartEvaluationRunRequest(run=run),
        metadata=admin.metadata,
        timeout=RUN_TIMEOUT,
    ):
        kind = event.WhichOneof("event")
        if kind == "run":
            run_id = event.run.id
        elif kind == "report":
            assert run_id
            return run_id, event.report.id
    raise AssertionError(f"run {run_id or '(none)'} of v{version} ended without a report")


def _experiment(admin: Admin) -> None:
    """A running experiment of v1 (the control, by the production label) against v2, with 40
    units exposed and a boolean outcome each: results with intervals and verdicts."""
    pb = experiment_pb2
    xsb = experiment_service_pb2
    admin.experiments.CreateExperiment(
        xsb.CreateExperimentRequest(
            experiment=pb.Experiment(
                name=EXPERIMENT,
                description="Does one short sentence get more thumbs up?",
                prompt=PROMPT,
                control_variant="control",
                variants=[
                    pb.Variant(name="control", weight=1),
                    pb.Variant(name="short", weight=1, prompt_version=2),
                ],
                unit=pb.ASSIGNMENT_UNIT_USER,
                metrics=[
                    pb.MetricSpec(
                        name="thumbs_up", kind=pb.METRIC_KIND_BOOLEAN, higher_is_better=True
                    )
                ],
            ),
            start=True,
        ),
        **admin.call,
    )
    for index in range(40):
        unit = f"pages-user-{index}"
        variant = admin.experiments.AssignVariant(
            xsb.AssignVariantRequest(experiment=EXPERIMENT, unit_id=unit), **admin.call
        ).assignment.variant
        admin.experiments.RecordExposure(
            xsb.RecordExposureRequest(experiment=EXPERIMENT, unit_id=unit, variant=variant),
            **admin.call,
        )
        admin.experiments.RecordOutcome(
            xsb.RecordOutcomeRequest(
                experiment=EXPERIMENT,
                unit_id=unit,
                metric="thumbs_up",
                boolean_value=variant == "short" or index % 3 == 0,
            ),
            **admin.call,
        )


def _complete(admin: Admin) -> None:
    """One completion of the sample `chat` prompt on SmolLM2 through GatewayService, and the
    wait until the request log lists it."""
    variables = struct_pb2.Struct()
    variables.update({"message": "What is the capital of France?"})
    request = gateway_service_pb2.StreamCompleteRequest(
        prompt="chat",
        variables=variables,
        request_id=REQUEST_ID,
        routing=routing_pb2.RoutingPreferences(model=SMOLLM2),
        parameters=generation_pb2.SamplingParameters(max_tokens=16, temperature=0),
        tags={"suite": "pages"},
    )
    events = list(
        admin.gateway.StreamComplete(request, metadata=admin.metadata, timeout=RUN_TIMEOUT)
    )
    assert events[-1].WhichOneof("event") == "final", events[-1]
    deadline = time.monotonic() + 30
    while REQUEST_ID not in admin.log_ids("chat"):
        assert time.monotonic() < deadline, "the request log never listed the completion"
        time.sleep(0.2)


# ------------------------------------------------------------------------------ every page


@dataclass(frozen=True)
class PageCase:
    """One page: its screenshot name, its path (formatted with `Seeded`'s fields), its
    HTTP status and whether the visitor signs in first."""

    name: str
    path: str
    status: int = 200
    signed_in: bool = True

    def __str__(self) -> str:
        return self.name


PAGES: Final = (
    PageCase("prompts", "/console/prompts"),
    PageCase("prompt", "/console/prompts/{prompt}"),
    PageCase("version", "/console/prompts/{prompt}/versions/2"),
    PageCase("diff", "/console/prompts/{prompt}/diff?from=1&to=2"),
    PageCase("label-history", "/console/prompts/{prompt}/labels"),
    PageCase("playground", "/console/prompts/{prompt}/playground?version=2"),
    PageCase("experiments", "/console/experiments"),
    PageCase("experiment", "/console/experiments/{experiment}"),
    PageCase("evaluations", "/console/evaluations"),
    PageCase("dataset", "/console/evaluations/datasets/{dataset}"),
    PageCase("run", "/console/evaluations/runs/{candidate_run}"),
    PageCase("report", "/console/evaluations/reports/{candidate_report}"),
    PageCase(
        "compare",
        "/console/evaluations/compare?baseline={baseline_report}&candidate={candidate_report}",
    ),
    PageCase("new-run", "/console/evaluations/new?prompt={prompt}&dataset={dataset}&version=2"),
    PageCase("request-log", "/console/logs"),
    PageCase("log-detail", "/console/logs/{request_id}"),
    PageCase("alerts", "/console/alerts"),
    PageCase("models", "/console/models"),
    PageCase("sign-in", "/console/sign-in", signed_in=False),
    PageCase("not-found", "/console/prompts/pages-no-such-prompt", status=404),
)


def _path(case: PageCase, seeded: Seeded) -> str:
    values = {key: urllib.parse.quote(value, safe="") for key, value in asdict(seeded).items()}
    return case.path.format(**values)


def checked(page: Page, name: str) -> None:
    """The page as it stands: one visible <h1>, no horizontal overflow of the page itself, no
    serious or critical accessibility violation; a screenshot kept."""
    heading = page.locator("h1")
    expect(heading).to_have_count(1)
    expect(heading).to_be_visible()
    assert page.evaluate(NO_OVERFLOW), (
        f"{page.url} is wider than the window: "
        + json.dumps(
            page.evaluate(
                "() => ({scrollWidth: document.documentElement.scrollWidth,"
                " innerWidth: window.innerWidth})"
            )
        )
        + "; widest: "
        + json.dumps(_widest(page))
    )
    assert_accessible(page)
    save_screenshot(page, name)


def _widest(page: Page) -> list[str]:
    """The elements that stick out past the window's right edge (to name the culprit)."""
    found: list[str] = page.evaluate(
        """() => [...document.querySelectorAll("body *")]
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
            .slice(0, 8)
            .map((e) => `${e.tagName.toLowerCase()}.${[...e.classList].join(".")}`
                + ` (${Math.round(e.getBoundingClientRect().right)}px)`)"""
    )
    return found


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=str)
@pytest.mark.parametrize("case", PAGES, ids=str)
def test_every_page_at_each_viewport(
    console_serve: ServeProcess, seeded: Seeded, page: Page, viewport: Viewport, case: PageCase
) -> None:
    base = base_url(console_serve)
    if case.signed_in:
        sign_in(page, base, console_serve.api_key)
    response = page.goto(base + _path(case, seeded))
    assert response is not None
    assert response.status == case.status, response.text()[:2000]
    assert page.url.split("?")[0].endswith(_path(case, seeded).split("?")[0])
    checked(page, f"{case.name}-{viewport.name}")


# ------------------------------------------------------------------------ tenant isolation


def test_another_tenant_sees_nothing_of_the_default_tenant(
    console_serve: ServeProcess, admin: Admin, seeded: Seeded, page: Page
) -> None:
    admin.gateway.CreateTenant(
        gateway_service_pb2.CreateTenantRequest(
            tenant=gateway_pb2.Tenant(id=TENANT, display_name="Pages tenant")
        ),
        **admin.call,
    )
    key = admin.new_key(gateway_pb2.ROLE_TENANT_ADMIN, TENANT)
    defaults = admin.prompts.ListPrompts(
        prompt_service_pb2.ListPromptsRequest(page_size=1000), **admin.call
    ).prompts
    default_prompts = {p.name for p in defaults}
    assert {"chat", "summarize", PROMPT} <= default_prompts
    default_requests = set(admin.log_ids())
    assert REQUEST_ID in default_requests
    base = base_url(console_serve)

    sign_in(page, base, key)
    expect(page.get_by_role("heading", name="Prompts", exact=True)).to_be_visible()
    expect(page.locator("header .who")).to_contain_text(TENANT)
    shown = set(page.locator("main a").all_inner_texts())
    assert not shown & default_prompts, shown & default_prompts
    main = page.locator("main").inner_text()
    assert PROMPT not in main

    page.goto(f"{base}/console/logs")
    expect(page.get_by_text("No logged request matches")).to_be_visible()
    main = page.locator("main").inner_text()
    assert not [request_id for request_id in default_requests if request_id in main]
    checked(page, "tenant-request-log")

    for path in (
        f"/console/prompts/{PROMPT}",
        "/console/prompts/chat",
        f"/console/evaluations/reports/{seeded.candidate_report}",
        f"/console/logs/{REQUEST_ID}",
    ):
        response = page.goto(base + path)
        assert response is not None
        assert response.status == 404, (path, response.status)
        expect(page.get_by_role("heading", level=1)).to_contain_text(
            re.compile("not found", re.IGNORECASE)
        )
        assert "Paris" not in page.locator("main").inner_text()
    checked(page, "tenant-not-found")


# ----------------------------------------------------------------------------------- viewer


def test_a_viewer_is_offered_no_action_and_its_forged_posts_are_refused(
    console_serve: ServeProcess, admin: Admin, seeded: Seeded, page: Page
) -> None:
    base = base_url(console_serve)
    console = f"{base}/console"
    sign_in(page, base, admin.new_key(gateway_pb2.ROLE_VIEWER))
    expect(page.locator("header .who")).to_contain_text("viewer")

    page.goto(f"{console}/prompts/{PROMPT}/versions/2")
    expect(page.get_by_role("heading", name=f"{PROMPT} v2")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Point label at"))).to_have_count(0)
    expect(page.get_by_text("may view but not move labels")).to_be_visible()
    checked(page, "viewer-version")

    page.goto(f"{console}/prompts/{PROMPT}/labels")
    expect(page.get_by_role("row").filter(has_text="moved")).to_contain_text("v2")
    expect(page.get_by_role("button", name=re.compile("Roll back"))).to_have_count(0)

    page.goto(f"{console}/experiments/{EXPERIMENT}")
    expect(page.get_by_role("heading", name=f"Experiment {EXPERIMENT}")).to_be_visible()
    for action in ("Start experiment", "Stop experiment"):
        expect(page.get_by_role("button", name=action)).to_have_count(0)
    checked(page, "viewer-experiment")

    page.goto(f"{console}/evaluations")
    expect(page.get_by_role("link", name=DATASET, exact=True).first).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("Start a run"))).to_have_count(0)
    expect(page.locator('a[href*="/console/evaluations/new"]')).to_have_count(0)

    page.goto(f"{console}/prompts/{PROMPT}/playground?version=2")
    expect(page.get_by_role("button", name="Run", exact=True)).to_have_count(0)
    checked(page, "viewer-playground")

    # Forged POSTs: the session's cookie and its valid CSRF token (from the sign-out form).
    token = page.locator(CSRF_INPUT).first.get_attribute("value")
    assert token
    labels = admin.labels(PROMPT)
    runs = admin.run_ids(PROMPT)
    logged = admin.log_ids(PROMPT)
    forged = {
        "set label": (
            f"/prompts/{PROMPT}/labels/set",
            {"version": "2", "label": f"production@{labels['production']}", "reason": "forged"},
        ),
        "roll back": (
            f"/prompts/{PROMPT}/labels/rollback",
            {"label": "staging", "expected_version": str(labels["staging"])},
        ),
        "start experiment": (f"/experiments/{EXPERIMENT}/start", {}),
        "stop experiment": (f"/experiments/{EXPERIMENT}/stop", {"reason": "forged"}),
        "start run": (
            "/evaluations/runs",
            {
                "prompt": PROMPT,
                "version": "2",
                "dataset": DATASET,
                "repeats": "1",
                "scorers": "- {name: answer, contains: {}}\n",
            },
        ),
        "playground run": (
            f"/prompts/{PROMPT}/playground",
            {"do": "run", "version": "2", "var.message": "forged", "model": SMOLLM2},
        ),
        "playground stream": (
            f"/prompts/{PROMPT}/playground/stream",
            {"do": "run", "version": "2", "var.message": "forged", "model": SMOLLM2},
        ),
        "cancel run": (f"/evaluations/runs/{seeded.candidate_run}/cancel", {}),
    }
    refused = {}
    for what, (path, form) in forged.items():
        response = page.request.post(
            console + path, form={"csrf_token": token, **form}, max_redirects=0
        )
        refused[what] = (response.status, "PERMISSION_DENIED" in response.text())
    assert refused == dict.fromkeys(forged, (403, True))

    assert admin.labels(PROMPT) == labels
    state = admin.experiments.GetExperiment(
        experiment_service_pb2.GetExperimentRequest(name=EXPERIMENT), **admin.call
    ).experiment.state
    assert state == experiment_pb2.EXPERIMENT_STATE_RUNNING
    assert admin.run_ids(PROMPT) == runs
    candidate = admin.evaluations.GetEvaluationRun(
        evaluation_service_pb2.GetEvaluationRunRequest(id=seeded.candidate_run), **admin.call
    ).run
    assert candidate.state == evaluation_pb2.RUN_STATE_SUCCEEDED
    # The gateway stores a request's log record before it answers (request_log
    # confirm_before_final), and each forged POST's answer has been read: a run that got
    # through would be listed already.
    assert admin.log_ids(PROMPT) == logged


# ----------------------------------------------------------------------------- field errors


def test_the_services_field_errors_stand_next_to_the_fields(
    console_serve: ServeProcess, seeded: Seeded, page: Page
) -> None:
    base = base_url(console_serve)
    sign_in(page, base, console_serve.api_key)
    text = page.locator("#var-text")
    sentences = page.locator("#var-max_sentences")

    # Without script's help: Render posts the form, the page comes back with the errors.
    page.goto(f"{base}/console/prompts/summarize/playground")
    text.fill("")
    sentences.fill("abc")
    with page.expect_response(lambda r: r.request.method == "POST") as rendered:
        page.get_by_role("button", name="Render", exact=True).click()
    assert rendered.value.status == 400
    page.wait_for_load_state()
    expect(page.get_by_role("alert").first).to_contain_text("INVALID_ARGUMENT")
    expect(text).to_have_attribute("aria-invalid", "true")
    expect(text).to_have_attribute("aria-describedby", "variables-text-error")
    expect(page.locator("#variables-text-error")).to_contain_text("required")
    expect(sentences).to_have_attribute("aria-invalid", "true")
    expect(sentences).to_have_attribute("aria-describedby", "variables-max_sentences-error")
    expect(page.locator("#variables-max_sentences-error")).to_contain_text("must be an integer")
    expect(sentences).to_have_value("abc")  # what was typed stays
    checked(page, "playground-field-errors")

    # With script: Run streams; the refusal's errors appear next to the fields, no page load.
    page.goto(f"{base}/console/prompts/summarize/playground")
    text.fill("")
    sentences.fill("abc")
    page.evaluate("() => { window.pagesMarker = 'still here'; }")
    url = page.url
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#run-error")).to_be_visible(timeout=60_000)
    expect(page.locator("#run-error")).to_contain_text("INVALID_ARGUMENT")
    expect(text).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#var-text-live-error")).to_contain_text("required")
    expect(text).to_have_attribute("aria-describedby", "var-text-live-error")
    expect(sentences).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#var-max_sentences-live-error")).to_contain_text("must be an integer")
    assert page.evaluate("() => window.pagesMarker") == "still here"
    assert page.url == url
    checked(page, "playground-live-field-errors")

    # The evaluation start form: scorers that are not YAML.
    page.goto(f"{base}/console/evaluations/new?prompt={PROMPT}&dataset={DATASET}&version=2")
    scorers = page.get_by_label("Scorers (YAML)")
    scorers.fill("- name: answer\n  contains: {substrings: [unclosed\n")
    with page.expect_response(lambda r: r.request.method == "POST") as started:
        page.get_by_role("button", name="Start the run").click()
    assert started.value.status == 400
    page.wait_for_load_state()
    expect(scorers).to_have_attribute("aria-invalid", "true")
    expect(scorers).to_have_attribute("aria-describedby", "scorers-error scorers-hint")
    expect(page.locator("#scorers-error")).to_contain_text("is not YAML")
    expect(scorers).to_have_value("- name: answer\n  contains: {substrings: [unclosed\n")
    checked(page, "evaluation-new-field-errors")


# ---------------------------------------------------------------------------------- sign-in


def test_sign_in_refusal_cookie_and_sign_out(
    console_serve: ServeProcess, seeded: Seeded, page: Page
) -> None:
    base = base_url(console_serve)
    with page.expect_response(lambda r: r.request.method == "POST") as refused:
        sign_in(page, base, "gk_pages_not_a_key", expect_success=False)
    assert refused.value.status == 401
    expect(page.get_by_text("This key was refused")).to_be_visible()
    expect(page.get_by_label("API key", exact=True)).to_have_attribute("aria-invalid", "true")
    assert not [c for c in page.context.cookies() if c["name"] == "genai_console"]
    checked(page, "sign-in-refused")

    before = time.time()
    sign_in(page, base, console_serve.api_key)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "genai_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    assert cookie["expires"] > before + 60, cookie["expires"]  # a persistent, expiring cookie
    assert page.evaluate("() => document.cookie") == ""  # script cannot read it

    page.goto(f"{base}/console/prompts/{PROMPT}")
    expect(page.get_by_role("heading", name=PROMPT, exact=True)).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/console/sign-in"))
    expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "genai_console"]
    for path in (f"/console/prompts/{PROMPT}", "/console/logs", "/console/evaluations"):
        page.goto(base + path)
        expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
        expect(page.get_by_label("API key", exact=True)).to_be_visible()
