"""Block diffusion training (`diffusion_block_size`): the noising, the mask, and DiffusionTrainer's loss against a
loop over blocks written from BD3-LM's definition, in float64 (values and gradients, fused and unfused, both
attention implementations, shifted and unshifted logits); models whose attention cannot take the mask are refused."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, TrainingArguments

from dftune.diffusion.block import training_mask
from dftune.errors import DftuneError
from dftune.stages.dllm import DiffusionCollator, DiffusionTrainer
from tests.stages.masked_lm_families import LAYERS

MASK_ID = 5  # any id: the loss does not care which token stands for a mask


def features(rows: int = 3) -> list[dict[str, list[int]]]:
    """Prompts of 3..5 tokens and answers of 4..8: block boundaries fall inside prompts and answers."""
    out = []
    for i in range(rows):
        prompt = [10 + i + k for k in range(3 + i)]
        answer = [40 + 2 * k + i for k in range(4 + 2 * i)]
        out.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return out


def noised(block_size: int, seed: int = 0, eps: float = 0.05) -> dict[str, torch.Tensor]:
    collator = DiffusionCollator(MASK_ID, eos_token_id=2, eps=eps, block_size=block_size,
                                 generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return collator(features())


def make_trainer(model, tmp_path, block_size: int, *, fused: bool, shift: bool) -> DiffusionTrainer:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    return DiffusionTrainer(model=model, args=args, objective="sft", fused_loss="true" if fused else "false",
                            shift_logits=shift, block_size=block_size)  # fmt: skip


def loop_reference(model, batch, block_size: int, shift: bool) -> torch.Tensor:
    """BD3-LM's loss block by block: for each row and block b, the model runs on [x_0 blocks < b, x_t block b]
    under an additive mask built by loops (clean position q sees clean blocks <= its own; the noisy block sees
    everything before it and itself), and the masked tokens of block b add CE / t; the sum is divided by the answer
    tokens."""
    rows, length = batch["input_ids"].shape
    total = torch.zeros((), dtype=torch.float64)
    for r in range(rows):
        for start in range(0, length, block_size):
            end = min(start + block_size, length)
            masked = [i for i in range(start, end) if batch["labels"][r, i] != -100 and (i > 0 or not shift)]
            if not masked:
                continue
            seq = torch.cat([batch["clean_ids"][r, :start], batch["input_ids"][r, start:end]])[None]
            allowed = torch.zeros(end, end, dtype=torch.bool)
            for q in range(end):
                for k in range(end):
                    allowed[q, k] = q >= start or k // block_size <= q // block_size
            bias = torch.zeros(end, end, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
            logits = model(input_ids=seq, attention_mask=bias[None, None], position_ids=torch.arange(end)[None],
                           use_cache=False).logits[0]  # fmt: skip
            for i in masked:
                source = logits[i - 1] if shift else logits[i]
                ce = F.cross_entropy(source[None], batch["labels"][r, i : i + 1])
                total = total + ce / batch["t"][r, i].double()
    return total / batch["answer_mask"].sum()


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def assert_matches(ours: torch.Tensor, our_grad: torch.Tensor, expected: torch.Tensor, grad: torch.Tensor) -> None:
    """Tolerances of a float64 Llama that is not wholly float64: its RMSNorm (and eager's softmax) round through
    float32, so two computations of one function in other shapes and orders agree to float32's rounding (seen: loss
    2e-10 relative, gradients 4e-8 of their norm). A wrong mask or weight is off by 1e-1 (a clean block too many
    moves the gradient by 20% of its norm)."""
    torch.testing.assert_close(ours, expected, rtol=1e-8, atol=0)
    assert float((our_grad - grad).norm() / grad.norm()) < 1e-6
    torch.testing.assert_close(our_grad, grad, rtol=0, atol=1e-6 * float(grad.abs().max()))


def test_complementary_copies_train_every_answer_token_once():
    batch = noised(block_size=3)
    first, second = batch["labels"][0::2] != -100, batch["labels"][1::2] != -100
    answer = batch["answer_mask"][0::2]
    assert torch.equal(first ^ second, answer) and not (first & second).any()  # each answer token in one copy
    assert torch.equal(batch["clean_ids"][0::2], batch["clean_ids"][1::2])
    assert not (batch["input_ids"][~batch["answer_mask"]] == MASK_ID).any()  # prompts never masked
    assert torch.equal(batch["input_ids"] == MASK_ID, batch["labels"] != -100)
    t = batch["t"]
    torch.testing.assert_close(t[0::2] + t[1::2], torch.ones_like(t[0::2]))  # ratios t and 1 - t
    for start in range(0, t.shape[1], 3):  # one ratio per block
        assert torch.equal(t[:, start : start + 3], t[:, start : start + 1].expand_as(t[:, start : start + 3]))
    assert ((t >= 0.05 - 1e-7) & (t <= 0.95 + 1e-7)).all()
    torch.testing.assert_close(batch["loss_weight"], 1.0 / t.double())


def test_training_mask_is_bd3lms():
    """L = 4, blocks of 2, [x_t, x_0]: noisy block 1 (rows 2, 3) sees itself and clean block 0 (columns 4, 5)."""
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ], dtype=torch.bool)  # fmt: skip
    assert torch.equal(training_mask(4, 2), expected)


@pytest.mark.parametrize("fused, shift, attention, block_size", [
    (False, False, "sdpa", 3), (True, False, "sdpa", 4), (True, True, "eager", 3), (False, True, "sdpa", 5),
])  # fmt: skip
def test_loss_equals_block_loop(tiny_model_dir, tmp_path, fused, shift, attention, block_size):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64, attn_implementation=attention)
    trainer = make_trainer(model, tmp_path, block_size, fused=fused, shift=shift)
    assert (trainer.fused_head is not None) == fused
    model.train()
    batch = noised(block_size)
    count = batch["answer_mask"].sum()
    ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=count)
    ours.backward()
    our_grad = grads(model).clone()
    model.zero_grad()
    expected = loop_reference(model, batch, block_size, shift)
    expected.backward()
    assert_matches(ours, our_grad, expected, grads(model))


def qwen2_model():
    config = AutoConfig.for_model("qwen2", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=1, intermediate_size=64)  # fmt: skip
    return AutoModelForCausalLM.from_config(config, dtype=torch.float64)


def test_qwen2_trains_blocks_as_the_loop(tmp_path):
    """A second family of BLOCK_FAMILIES through the same path (grouped-query attention, its own modeling code)."""
    torch.manual_seed(0)
    model = qwen2_model().train()
    trainer = make_trainer(model, tmp_path, 4, fused=True, shift=False)
    batch = noised(4)
    ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=batch["answer_mask"].sum())
    ours.backward()
    our_grad = grads(model).clone()
    model.zero_grad()
    expected = loop_reference(model, batch, 4, shift=False)
    expected.backward()
    assert_matches(ours, our_grad, expected, grads(model))


def test_accumulation_is_exact(tiny_model_dir, tmp_path):
    """One batch of 3 samples (6 rows) == 6 micro-batches of one row (a copy) each."""
    from tests.stages.test_dllm_trainer import assert_accumulation_is_exact

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    trainer = make_trainer(model, tmp_path, 3, fused=False, shift=False)
    assert_accumulation_is_exact(trainer, noised(3))


def test_a_family_without_the_mask_is_refused(tmp_path):
    config = AutoConfig.for_model("bert", vocab_size=64, **LAYERS)
    with pytest.raises(DftuneError, match="diffusion_block_size.*bert"):
        make_trainer(AutoModelForMaskedLM.from_config(config), tmp_path, 4, fused=False, shift=False)


@pytest.mark.slow
def test_yaml_with_diffusion_block_size_trains(tmp_path, capsys):
    """parse -> build_trainer -> train: the key reaches the collator (2 rows per sample) and the trainer's loss; the
    saved model records its block size, and `dftune generate` replies the same with and without the cache."""
    from dftune.cli.main import main
    from dftune.models.presets import init_model
    from dftune.run import parse_config
    from dftune.stages.dllm import build_trainer
    from tests.stages.test_dllm_end_to_end import history, seed_003_yaml, write_records

    dllm_dir = init_model("tiny-dllm", tmp_path / "tiny-dllm")
    out = tmp_path / "blocks"
    data = write_records(tmp_path / "train.json", 16)
    config = seed_003_yaml(tmp_path, dllm_dir, data, out, extra=(
        "stage: dllm\ndiffusion_block_size: 4\nmax_steps: 3\nlogging_steps: 1\nreport_to: none\nuse_cpu: true\n"
        "save_strategy: 'no'\nfused_loss: 'true'\n"))  # fmt: skip
    trainer = build_trainer(parse_config([config]), callbacks=[])
    assert trainer.block_size == 4 and trainer.data_collator.block_size == 4 and trainer.fused_head is not None
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["input_ids"].shape[0] == 4 and torch.equal(batch["clean_ids"][0], batch["clean_ids"][1])
    assert main(["train", config]) == 0
    logs = history(out)
    assert len(logs) == 3 and all(e["loss"] > 0 and 0 <= e["token_accuracy"] <= 1 for e in logs)
    assert json.loads((out / "config.json").read_text())["diffusion_block_size"] == 4  # decoding reads it
    for cache in ("none", "prefix"):
        assert main(["generate", "--model", str(out), "--prompt", "copy abc", "--max_new_tokens", "8",
                     "--cache", cache]) == 0
    replies = capsys.readouterr().out.splitlines()[-2:]
    assert replies[0] == replies[1]


def test_cosine_schedule_with_blocks_is_a_parse_error(tmp_path, capsys):
    from dftune.cli.main import main

    code = main(["train", "--stage", "dllm", "--model_name_or_path", "m", "--data_files", "d.json",
                 "--output_dir", str(tmp_path / "o"), "--diffusion_block_size", "4", "--noise_schedule", "cosine"])
    err = capsys.readouterr().err
    assert code == 2 and "diffusion_block_size" in err and "noise_schedule: linear" in err and "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--diffusion_block_size", "4", "--block_length", "8", "--max_new_tokens", "16"], "block_length 8"),
])  # fmt: skip
def test_decoding_keys_that_contradict_the_blocks_are_parse_errors(tmp_path, capsys, flags, message):
    from dftune.cli.main import main

    code = main(["train", "--stage", "dllm", "--model_name_or_path", "m", "--data_files", "d.json",
                 "--output_dir", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_a_full_attention_run_takes_the_approximate_cache(tmp_path):
    """Without diffusion_block_size, `cache: dual` is Fast-dLLM's approximate cache (no longer a parse error); the
    model's fitness for it is checked when the trainer is built, before any step."""
    from dftune.models.presets import init_model
    from dftune.run import parse_config
    from dftune.stages.dllm import build_trainer
    from tests.stages.test_dllm_end_to_end import seed_003_yaml, write_records

    dllm_dir = init_model("tiny-dllm", tmp_path / "tiny-dllm")
    data = write_records(tmp_path / "train.json", 8)
    extra = "stage: dllm\ncache: dual\nmax_steps: 1\nreport_to: none\nuse_cpu: true\nsave_strategy: 'no'\n"
    config = seed_003_yaml(tmp_path, dllm_dir, data, tmp_path / "out", extra=extra)
    trainer = build_trainer(parse_config([config]), callbacks=[])
    assert trainer.block_size is None and trainer.model.config.is_causal is False
