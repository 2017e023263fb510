"""The console's main flow in a real browser against a real `genai serve` (Triton, SmolLM2):
a prompt engineer signs in, pushes a new version from the CLI and sees it appear, diffs it, is
refused a protected promotion for lack of an evaluation, starts an evaluation run from the
console and watches it finish, promotes (now allowed), runs the version in the playground on
SmolLM2 with the answer streamed in, and finds that request in the request log. Every page on
the way is checked with axe-core and kept as a screenshot."""

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import json_format
from playwright.sync_api import Page, expect

from tests.support.browser import assert_accessible, base_url, save_screenshot, sign_in
from tests.support.serve import ROOT, ServeProcess

pytestmark = [pytest.mark.browser, pytest.mark.system]

PROMPT = "console-flow"
DATASET = "console-flow-basics"
SMOLLM2 = "smollm2-135m-instruct"
RUN_TIMEOUT_MS = 240_000
"""An evaluation of 4 examples on SmolLM2 through Triton takes seconds; CI's 2 cores are slow."""
VERSION_1 = f"""\
name: {PROMPT}
description: The browser flow's prompt (a copy of the sample chat prompt).
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
  max_tokens: 24
"""
VERSION_2 = VERSION_1.replace(
    "Answer in plain text.", "Answer in plain text, in one short sentence."
).replace(
    "messages:",
    f"""protected_labels: [production]
evaluation_gate:
  dataset: {DATASET}
  thresholds: [{{scorer: answer, min_mean: 0.5}}]
messages:""",
)
"""The second version, pushed with the prompt's gate: `production` now moves only to a version
whose evaluation on the dataset has a mean `answer` score of 0.5 or more."""


def push(serve: ServeProcess, path: Path, message: str) -> str:
    """`genai prompts push PATH` as a person runs it; returns its output."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "prompts", "push", str(path), "--message", message],
        cwd=ROOT,
        env={**os.environ, "GENAI_API_KEY": serve.api_key, "GENAI_TARGET": serve.address},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def dataset_and_production(serve: ServeProcess) -> None:
    """The gate's dataset of four questions (the answer must contain the reference), and
    `production` on version 1."""
    examples = [
        json_format.Parse(line, evaluation_pb2.Example())
        for line in (ROOT / "prompts" / "evals" / "chat-basics.jsonl").read_text().splitlines()[:4]
    ]
    metadata = (("authorization", f"Bearer {serve.api_key}"),)
    with grpc.insecure_channel(serve.address) as channel:
        evaluations = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
        evaluations.CreateDataset(
            evaluation_service_pb2.CreateDatasetRequest(
                dataset=evaluation_pb2.Dataset(name=DATASET, prompt=PROMPT)
            ),
            metadata=metadata,
        )
        evaluations.AddExamples(
            evaluation_service_pb2.AddExamplesRequest(dataset=DATASET, examples=examples),
            metadata=metadata,
        )
        prompts = prompt_service_pb2_grpc.PromptServiceStub(channel)
        prompts.SetLabel(
            prompt_service_pb2.SetLabelRequest(prompt=PROMPT, label="production", version=1),
            metadata=metadata,
        )


def checked(page: Page, name: str) -> None:
    """The page as it stands: no serious or critical accessibility violation, and a
    screenshot kept."""
    assert_accessible(page)
    save_screenshot(page, name)


def test_push_diff_gate_evaluate_promote_play_and_find_the_request(
    console_serve: ServeProcess, page: Page, tmp_path: Path
) -> None:
    base = base_url(console_serve)
    prompt_file = tmp_path / f"{PROMPT}.yaml"
    prompt_file.write_text(VERSION_1)
    push(console_serve, prompt_file, "first version")
    dataset_and_production(console_serve)

    sign_in(page, base, console_serve.api_key)
    expect(page.get_by_role("heading", name="Prompts", exact=True)).to_be_visible()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=PROMPT, exact=True))
    expect(row).to_contain_text("v1")
    expect(row).to_contain_text("production → v1")
    checked(page, "01-prompts")

    # A new version pushed from the CLI appears.
    prompt_file.write_text(VERSION_2)
    assert "created v2" in push(console_serve, prompt_file, "one short sentence")
    row.get_by_role("link", name=PROMPT, exact=True).click()
    expect(page.get_by_role("heading", name=PROMPT, exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="v2", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="one short sentence")).to_be_visible()
    checked(page, "02-prompt")

    # The diff of v1 and v2, side by side.
    page.get_by_role("button", name="Diff").click()
    expect(page.get_by_role("heading", name=f"{PROMPT}: v1 → v2")).to_be_visible()
    expect(page.locator("table.diff td.del")).to_contain_text(["Answer in plain text."])
    expect(page.locator("table.diff td.add")).to_contain_text(
        ["Answer in plain text, in one short sentence."]
    )
    expect(page.get_by_role("cell", name="messages[0].content")).to_be_visible()
    checked(page, "03-diff")

    # Promoting v2 to the protected label is refused: no evaluation yet.
    page.goto(f"{base}/console/prompts/{PROMPT}/versions/2")
    expect(page.get_by_text("has no finished evaluation run")).to_be_visible()
    page.get_by_label("Label").select_option(label="production (now v1), protected")
    page.get_by_role("button", name="Point label at v2").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("EVALUATION_GATE_FAILED")
    expect(alert).to_contain_text("protected")
    checked(page, "04-promotion-refused")

    # Start an evaluation run from the console and watch it finish.
    page.get_by_role("link", name=f"Start an evaluation run on {DATASET}").click()
    expect(page.get_by_label("Dataset")).to_have_value(DATASET)
    expect(page.get_by_label("Version number")).to_have_value("2")
    page.get_by_label("Scorers (YAML)").fill("- name: answer\n  contains: {}\n")
    checked(page, "05-evaluation-new")
    page.get_by_role("button", name="Start the run").click()
    expect(page).to_have_url(re.compile(r"/console/evaluations/runs/[^/?]+"))
    checked(page, "06-evaluation-running")
    report_link = page.get_by_role("link", name=re.compile("Open the report"))
    expect(report_link).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_text("succeeded").first).to_be_visible()
    report_link.click()
    expect(page.get_by_text("What is the capital of France?").first).to_be_visible()
    expect(page.get_by_text("Paris").first).to_be_visible()
    checked(page, "07-evaluation-report")

    # The gate now passes, and the promotion goes through.
    page.goto(f"{base}/console/prompts/{PROMPT}/versions/2")
    expect(page.get_by_text(re.compile(r"passes report"))).to_be_visible()
    page.get_by_label("Label").select_option(label="production (now v1), protected")
    page.get_by_role("button", name="Point label at v2").click()
    expect(page.get_by_role("status")).to_contain_text("Label production now points to version 2")
    checked(page, "08-promoted")
    page.goto(f"{base}/console/prompts/{PROMPT}/labels")
    expect(page.get_by_role("row").filter(has_text="moved")).to_contain_text("v2")
    checked(page, "09-label-history")

    # The playground: SmolLM2 answers, streamed into the page.
    page.goto(f"{base}/console/prompts/{PROMPT}/playground?version=2")
    page.get_by_label(re.compile("^message")).fill("What is the capital of France?")
    page.get_by_label("Model").select_option(SMOLLM2)
    page.get_by_role("button", name="Run", exact=True).click()
    log_link = page.locator('#run-meta dd[data-key="log"] a')
    expect(log_link).to_be_visible(timeout=120_000)
    answer = page.locator("#answer").inner_text()
    assert "Paris" in answer, answer
    expect(page.locator('#run-meta dd[data-key="model"]')).to_contain_text(SMOLLM2)
    expect(page.locator('#run-meta dd[data-key="usage"]')).to_contain_text(" in, ")
    request_id = log_link.inner_text()
    checked(page, "10-playground")

    # That request, in the request log.
    page.goto(f"{base}/console/logs?prompt={PROMPT}")
    expect(page.get_by_role("link", name=request_id)).to_be_visible()
    checked(page, "11-request-log")
    page.get_by_role("link", name=request_id).click()
    expect(page.get_by_text(answer.strip()[:40]).first).to_be_visible()
    expect(page.get_by_text(SMOLLM2).first).to_be_visible()
    checked(page, "12-request-detail")
