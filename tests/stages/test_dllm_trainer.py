"""DiffusionTrainer's loss path on a tiny bidirectional model: the reference formula, exact accumulation, DFT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from dftune.losses import masked_diffusion_dft_loss
from dftune.models.presets import init_model
from dftune.stages.dllm import DiffusionCollator, DiffusionTrainer


@pytest.fixture(scope="module")
def dllm_dir(tmp_path_factory):
    return init_model("tiny-dllm", tmp_path_factory.mktemp("tiny-dllm"))


def make_trainer(model_dir, tmp_path, loss: str = "sft", alpha: float = 1.0) -> DiffusionTrainer:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    return DiffusionTrainer(model=model, args=args, objective=loss,
                            objective_kwargs={"alpha": alpha} if loss == "dft" else {})


def noised_batch(model_dir, rows: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Records of different prompt and answer lengths, noised with a seeded generator."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    features = []
    for i in range(rows):
        text = "abcdefgh"[: 2 + i]
        ids = tokenizer(f"say {text}:", add_special_tokens=False)["input_ids"]
        answer = tokenizer(text[::-1] * (1 + i % 2), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        features.append({"input_ids": ids + answer, "labels": [-100] * len(ids) + answer})
    collator = DiffusionCollator(tokenizer.mask_token_id, tokenizer.eos_token_id, eps=0.3,
                                 generator=torch.Generator().manual_seed(seed))
    return collator(features)


def reference_loss(model, batch, alpha: float = 0.0) -> torch.Tensor:
    """LLaDA's SFT loss written out: CE at masked positions / t, summed, / answer tokens (EOS padding included);
    with alpha, each term also times alpha * p + 1 - alpha (p detached)."""
    logits = model(input_ids=batch["input_ids"]).logits  # [B, L, V], no shift
    ce = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none").view(logits.shape[:2])
    weight = alpha * torch.exp(-ce).detach() + 1 - alpha
    masked = batch["labels"] != -100
    return (weight * ce / batch["t"][:, None])[masked].sum() / batch["answer_mask"].sum()


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("loss, alpha", [("sft", 0.0), ("dft", 0.6)])
def test_compute_loss_equals_reference(dllm_dir, tmp_path, loss, alpha):
    trainer = make_trainer(dllm_dir, tmp_path, loss, alpha)
    model = trainer.model.train()
    batch = noised_batch(dllm_dir)
    count = batch["answer_mask"].sum()
    ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=count)
    ours.backward()
    our_grad = grads(model).clone()
    model.zero_grad()
    expected = reference_loss(model, batch, alpha)
    expected.backward()
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=0)  # float64 model: same sums, another order
    torch.testing.assert_close(our_grad, grads(model), rtol=1e-8, atol=1e-12)


def test_accumulation_is_exact(dllm_dir, tmp_path):
    """One batch of 4 == 4 micro-batches of 1 with accumulation: the same rows, the same masks and t. Rows of
    one batch are padded to the same length, so each micro-batch is a row of the big batch."""
    trainer = make_trainer(dllm_dir, tmp_path)
    assert_accumulation_is_exact(trainer, noised_batch(dllm_dir))
    assert trainer._train_window  # the metric window saw every micro-batch


def assert_accumulation_is_exact(trainer: DiffusionTrainer, big: dict[str, torch.Tensor]) -> None:
    """The big batch's gradient == the sum of its single-row micro-batches', each normalised by the global count."""
    model = trainer.model.train()
    micro = [{k: v[i : i + 1] for k, v in big.items()} for i in range(len(big["t"]))]
    samples, count = trainer.get_batch_samples(iter(micro), len(micro), torch.device("cpu"))
    assert len(samples) == len(micro) and int(count) == int(big["answer_mask"].sum())

    trainer.compute_loss(model, dict(big), num_items_in_batch=count).backward()
    whole = grads(model).clone()
    model.zero_grad()
    for batch in samples:
        trainer.compute_loss(model, dict(batch), num_items_in_batch=count).backward()
    torch.testing.assert_close(grads(model), whole, rtol=1e-9, atol=1e-12)


def test_dft_alpha_zero_is_the_plain_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 13, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 13, (3, 7), generator=gen).masked_fill(torch.rand(3, 7, generator=gen) < 0.5, -100)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    from dftune.losses import masked_diffusion_loss

    plain = masked_diffusion_loss(logits, labels, t, num_answer_tokens=21)
    zero = masked_diffusion_dft_loss(logits, labels, t, num_answer_tokens=21, alpha=0.0)
    torch.testing.assert_close(zero.loss, plain.loss, rtol=1e-12, atol=0)


def test_uniform_logits_closed_form():
    """Uniform logits over V: every CE is log V and p = 1/V. With 2 masked tokens in a row of t = 0.5 and
    4 answer tokens: plain loss = 2 * log V / 0.5 / 4 = log V; DFT (alpha 1) = log V / V."""
    vocab = 8
    logits = torch.zeros(1, 5, vocab, dtype=torch.float64)
    labels = torch.tensor([[-100, 3, -100, 4, -100]])
    t = torch.tensor([0.5], dtype=torch.float64)
    out = masked_diffusion_dft_loss(logits, labels, t, num_answer_tokens=4, alpha=1.0)
    assert float(out.loss) == pytest.approx(math.log(vocab) / vocab, rel=1e-12)
