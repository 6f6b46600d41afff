"""lm-eval's `--model dftune` on local tasks (a YAML over a local JSONL file: one multiple-choice task, one
generate_until task), offline: every score lm-eval reports equals the one computed here from the model directly.

Needs the `lmeval` extra (tests/harness runs in the venv that has it; docs/lm_eval.md says how CI runs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.cli.main import main
from dftune.diffusion.likelihood import elbo
from dftune.diffusion.sampler import decode, truncate_at_eos
from dftune.harness.loaded import load_evaluated
from dftune.harness.run import run_lm_eval
from dftune.models.presets import init_model
from lm_eval_tasks import GEN, MAX_GEN_TOKS, MC


def _records(tmp_path: Path) -> str:
    """ChatML records that teach the copy task, for a 2-step training run."""
    data = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"copy {w}:"}, {"role": "assistant", "content": w}]}
            for w in ("ab", "bc", "cd", "da", "ac", "bd")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(data)


def _train(model_dir: Path, out: Path, *extra: str) -> Path:
    """Two optimizer steps of `dftune train` on `model_dir` (a trained model, not only a random one, is scored)."""
    data = _records(out.parent)
    assert main(["train", "--model_name_or_path", str(model_dir), "--data_files", data, "--output_dir", str(out),
                 "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
                 "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tiny_model_dir, tmp_path_factory.mktemp("lora") / "out", "--finetuning_type", "lora",
                  "--lora_rank", "4")


@pytest.fixture(scope="module")
def dllm_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model("tiny-dllm", tmp_path_factory.mktemp("tiny-dllm"))


@pytest.fixture(scope="module")
def dllm_dir(dllm_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(dllm_base, tmp_path_factory.mktemp("dllm") / "out", "--stage", "dllm")


def _pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split (TemplateLM._encode_pair): encode the whole, the continuation is what follows the context."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    head = tokenizer(context, add_special_tokens=False)["input_ids"]
    return head, whole[len(head):]


def _by_doc(samples: list[dict]) -> list[dict]:
    return sorted(samples, key=lambda s: s["doc_id"])


def _check_mc(results: dict, log_likelihood) -> None:
    """Each choice's score is `log_likelihood(context, " " + choice)`; acc is how often the best one is right."""
    samples = _by_doc(results["samples"]["dftune_mc"])
    right = 0
    for sample, (question, choices, answer) in zip(samples, MC):
        expected = [log_likelihood(question, " " + c) for c in choices]
        got = [float(r[0][0]) for r in sample["resps"]]
        assert got == pytest.approx([e[0] for e in expected], abs=1e-4)
        assert [bool(r[0][1]) for r in sample["resps"]] == [e[1] for e in expected]
        right += max(range(len(choices)), key=lambda i: expected[i][0]) == answer
    assert results["results"]["dftune_mc"]["acc,none"] == pytest.approx(right / len(MC))


def _check_gen(results: dict, reply) -> None:
    """Each generation is `reply(context)` cut at the first newline; exact_match is how often it is the answer."""
    samples = _by_doc(results["samples"]["dftune_gen"])
    expected = [reply(q).split("\n")[0] for q, _ in GEN]
    assert [s["resps"][0][0] for s in samples] == expected
    assert any(expected)  # something was generated: an empty reply everywhere would hide a wrong cut
    hits = sum(e == a for e, (_, a) in zip(expected, GEN))
    assert results["results"]["dftune_gen"]["exact_match,none"] == pytest.approx(hits / len(GEN))


@pytest.mark.parametrize("which", ["full", "lora"])
def test_causal_scores_are_the_models_own(which, tiny_model_dir, lora_dir, task_dir):
    """The tiny Llama (full), and a trained LoRA adapter given as `pretrained=ADAPTER` (its base named by its
    adapter_config.json): log-likelihoods by a plain forward, greedy generation by `generate`."""
    pretrained = tiny_model_dir if which == "full" else lora_dir
    results = run_lm_eval(str(pretrained), None, ["dftune_mc", "dftune_gen"], include_path=str(task_dir),
                          log_samples=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    if which == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(lora_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(pretrained)

    @torch.no_grad()
    def log_likelihood(context: str, continuation: str) -> tuple[float, bool]:
        head, tail = _pair(tokenizer, context, continuation)
        logits = model(input_ids=torch.tensor([head + tail])).logits[0, len(head) - 1 : -1].double()  # [T, V]
        picked = torch.log_softmax(logits, -1)[torch.arange(len(tail)), torch.tensor(tail)]
        return float(picked.sum()), logits.argmax(-1).tolist() == tail

    @torch.no_grad()
    def reply(context: str) -> str:
        ids = torch.tensor([tokenizer(context, add_special_tokens=False)["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_GEN_TOKS,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    _check_mc(results, log_likelihood)
    _check_gen(results, reply)


def _diffusion_reference(model_dir: Path):
    """(log_likelihood, reply) of a diffusion model folder by `elbo` and `decode` directly, with the seed (3) and
    the ELBO samples (8) the tests give the backend: each request draws from its own generator so seeded."""
    loaded = load_evaluated(str(model_dir), device="cpu")
    tokenizer, eos = loaded.tokenizer, loaded.tokenizer.eos_token_id
    options = {"mask_token_id": loaded.mask_token_id, "shift_logits": loaded.shift_logits}

    def log_likelihood(context: str, continuation: str) -> tuple[float, bool]:
        head, tail = _pair(tokenizer, context, continuation)
        score = elbo(loaded.model, torch.tensor(head), torch.tensor(tail), samples=8, scheme="l",
                     generator=torch.Generator().manual_seed(3), **options)
        greedy = decode(loaded.model, torch.tensor([head]), max_new_tokens=len(tail),
                        generator=torch.Generator().manual_seed(3), **options).ids[0].tolist()
        return score, greedy == tail

    def reply(context: str) -> str:
        ids = torch.tensor([tokenizer(context, add_special_tokens=False)["input_ids"]])
        out = decode(loaded.model, ids, max_new_tokens=MAX_GEN_TOKS, eos_token_id=eos,
                     generator=torch.Generator().manual_seed(3), **options).ids[0].tolist()
        return tokenizer.decode(truncate_at_eos(out, eos), skip_special_tokens=True)

    return log_likelihood, reply


DIFFUSION_ARGS = {"mc_samples": 8, "seed": 3}


def test_diffusion_loglikelihood_is_the_elbo(dllm_dir, task_dir):
    """A trained tiny-dllm: each choice's score is its ELBO, is_greedy whether one-token-per-step decoding gives
    the choice, acc how often the best ELBO is the right choice."""
    results = run_lm_eval(str(dllm_dir), None, ["dftune_mc"], include_path=str(task_dir), log_samples=True,
                          model_args=DIFFUSION_ARGS)
    _check_mc(results, _diffusion_reference(dllm_dir)[0])


def test_diffusion_generation_is_the_sampler(dllm_base, task_dir):
    """The tiny-dllm preset (random weights, so the replies are not all empty as the 2-step trained model's are):
    each generation is `decode`'s reply cut at EOS and at the newline."""
    results = run_lm_eval(str(dllm_base), None, ["dftune_gen"], include_path=str(task_dir), log_samples=True,
                          model_args=DIFFUSION_ARGS)
    _check_gen(results, _diffusion_reference(dllm_base)[1])
