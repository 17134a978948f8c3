"""Inspect AI integration: the `alignparadox/` model provider and the prompt-set tasks, run by the
real `inspect eval` command and by `inspect_ai.eval`, on the aligned organism, plain and steered.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.importorskip("inspect_ai", reason="inspect-ai is not installed (pip install -e '.[dev]')")

from inspect_ai import eval as inspect_eval  # noqa: E402
from inspect_ai.log import EvalLog  # noqa: E402
from inspect_ai.model import GenerateConfig, get_model  # noqa: E402

from alignparadox.attacks.model_tinkering import (  # noqa: E402
    ActivationAddition,
    DirectionalAblation,
    WeightOrthogonalization,
)
from alignparadox.datasets import load_prompt_set  # noqa: E402
from alignparadox.errors import UserError  # noqa: E402
from alignparadox.geometry import Direction  # noqa: E402
from alignparadox.targets import GenerationConfig  # noqa: E402
from inspect_cli import finished_log  # noqa: E402

# Inspect's own retry set-up warns about a tenacity argument; nothing this project controls.
pytestmark = pytest.mark.filterwarnings("ignore:The 'initial' parameter:DeprecationWarning")

MODEL = "alignparadox/organism:aligned-5"
MAX_TOKENS = 80  # long enough for a whole organism answer, which the exact judge needs
# An inline task, as a user would write one: fictional organism-world requests, greedy answers,
# scored by the organism world's exact judge through the toolkit's judge scorer.
TASK_FILE = """
import json
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.solver import generate

from alignparadox.integrations.inspect.tasks import judge_scorer

REQUESTS = json.loads((Path(__file__).parent / "requests.json").read_text())


@task
def inline():
    return Task(dataset=[Sample(input=request, id=str(i)) for i, request in enumerate(REQUESTS)],
                solver=generate(), scorer=judge_scorer("organism"),
                config=GenerateConfig(max_tokens={max_tokens}))
"""



@pytest.fixture(scope="module")
def requests():
    return [r.text for r in load_prompt_set("organisms").harmful().sample(3, 0)]


def _answers(target, requests) -> list[str]:
    config = GenerationConfig(max_new_tokens=MAX_TOKENS)
    return [target.generate([request], config)[0] for request in requests]


def _start_cli(folder: Path, *model_args: str) -> subprocess.Popen:
    """`inspect eval task.py --model alignparadox/...` in a fresh process, logging to folder."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # The task file is named relative to the working folder: Inspect 0.3.285 globs task paths,
    # which pathlib refuses for absolute ones.
    command = [str(Path(sys.executable).with_name("inspect")), "eval", "task.py",
               "--model", MODEL, "--display", "none", "--log-dir", str(folder / "logs"),
               *[part for arg in model_args for part in ("-M", arg)]]
    with (folder / "output.txt").open("w") as output:  # a file: no pipe to fill up and block
        return subprocess.Popen(command, cwd=folder, env=env, stdout=output,
                                stderr=subprocess.STDOUT)


def _outputs(log: EvalLog) -> list[str]:
    return [s.output.completion for s in sorted(log.samples, key=lambda s: int(s.id))]


def _metric(log: EvalLog, name: str) -> float:
    (score,) = [score for score in log.results.scores if score.name == name]
    return score.metrics["mean"].value


def test_entry_point_is_installed():
    group = {ep.name: ep.value for ep in entry_points(group="inspect_ai")}
    assert group.get("alignparadox") == "alignparadox.integrations.inspect._registry", \
        "the inspect_ai entry point is missing: reinstall with pip install -e '.[dev]'"


def test_inspect_eval_cli_plain_and_ablated(organism, requests, refusal_direction, tmp_path):
    for name in ("plain", "ablated"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "task.py").write_text(TASK_FILE.replace("{max_tokens}",
                                                                   str(MAX_TOKENS)))
        (tmp_path / name / "requests.json").write_text(json.dumps(requests))
    # Both runs at once: each process spends most of its time importing torch and Inspect.
    runs = {"plain": _start_cli(tmp_path / "plain"),
            "ablated": _start_cli(tmp_path / "ablated", f"direction={refusal_direction}",
                                  "ablate=true")}
    plain, ablated = (finished_log(runs[name], tmp_path / name) for name in ("plain", "ablated"))

    # The answers are the target's own greedy answers, plain and ablated.
    assert _outputs(plain) == _answers(organism, requests)
    with DirectionalAblation(Direction.load(refusal_direction)).applied(organism) as attacked:
        assert _outputs(ablated) == _answers(attacked, requests)
    assert _outputs(ablated) != _outputs(plain)
    # The judge's scores: the aligned organism refuses every request; ablated it refuses none.
    assert _metric(plain, "refusal") == 1.0 and _metric(plain, "asr") == 0.0
    assert _metric(ablated, "refusal") == 0.0 and _metric(ablated, "asr") > 0.0
    assert ablated.eval.model_args == {"direction": str(refusal_direction), "ablate": True}
    sample = ablated.samples[0]
    assert sample.output.metadata["alignparadox"]["intervention"]["attack"] == "ablation"


def test_registered_prompt_set_task_with_steering_in_process(organism, refusal_direction,
                                                             tmp_path):
    (log,) = inspect_eval("alignparadox/organisms", model=MODEL,
                          model_args={"direction": str(refusal_direction), "alpha": -1.0},
                          task_args={"n": 3, "judge": "organism"}, max_tokens=MAX_TOKENS,
                          log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    expected = load_prompt_set("organisms").harmful().sample(3, 0)
    assert sorted(s.id for s in log.samples) == sorted(r.id for r in expected)
    requests = [s.input for s in log.samples]
    attack = ActivationAddition(Direction.load(refusal_direction), alpha=-1.0)
    with attack.applied(organism) as attacked:
        assert [s.output.completion for s in log.samples] == _answers(attacked, requests)
    assert _metric(log, "refusal") < 1.0
    assert log.eval.metadata["prompt_set"] == "organisms"


def test_orthogonalized_target_and_generate_settings(organism, requests, refusal_direction):
    def generate(model, **config):
        config = GenerateConfig(max_tokens=MAX_TOKENS, **config)
        return asyncio.run(model.generate(requests[0], config=config))

    model = get_model(MODEL, memoize=False, direction=str(refusal_direction),
                      orthogonalize=True)
    output = generate(model)
    with WeightOrthogonalization(Direction.load(refusal_direction)).applied(organism) as edited:
        assert output.completion == _answers(edited, requests[:1])[0]
    assert output.choices[0].stop_reason in ("stop", "max_tokens")

    # Stop sequences cut the answer; settings the decoding loop cannot honour are refused.
    plain = get_model(MODEL, memoize=False)
    full = generate(plain).completion
    assert output.completion != full  # orthogonalized, the aligned organism no longer refuses
    stop = full.split()[1]
    cut = generate(plain, stop_seqs=[stop])
    assert cut.completion == full[:full.find(stop)] and cut.stop_reason == "stop"
    with pytest.raises(UserError, match="top_k"):
        generate(plain, top_k=5)


@pytest.mark.parametrize("model_args, message", [
    ({"alpha": -1.0}, "steer along a -M direction"),
    ({"direction": "d.json"}, "exactly one of"),
    ({"direction": "d.json", "alpha": 1.0, "ablate": True}, "exactly one of"),
    ({"direction": "d.json", "ablate": True, "layer": 2}, "applies to -M alpha only"),
    ({"direction": "d.json", "ablate": "yes"}, "takes true or false"),
    ({"temprature": 0.5}, "unknown model arg"),
])
def test_bad_model_args_are_refused_before_loading(model_args, message):
    with pytest.raises(UserError, match=message):
        get_model("alignparadox/organism:no-such-member", memoize=False, **model_args)
