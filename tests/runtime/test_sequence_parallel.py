"""Sequence parallelism (`sequence_parallel_size: 2`, Ulysses over gloo) trains exactly like one process.

2 processes x batch 1 with sequence_parallel_size 2 gather their two rows and each trains one half of every position
of both; 1 process x batch 2 trains the same two rows whole. The rows are long (about 100 tokens, several target
spans, so shard boundaries fall inside targets) and of different lengths. With plain SGD on a float64 model the
updates must agree to rounding: that checks the all-to-all around attention, the labels shifted before sharding
(the last position of shard 0 predicts the first label of shard 1) and the loss normalised by the global target count
over shards and accumulation steps, for every registered objective (bft and iw_sft weigh whole samples from the
statistics gathered over the shards). Stage dllm the same way: the group noises its gathered rows once, attention is
full over whole rows, the masked positions that round the length up are hidden. What cannot shard (stage dpo, block
diffusion, masked LMs' own position embeddings, precomputed reference columns) is an error.
"""

from __future__ import annotations

import json
import os
import random
import sys

import processes
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertForMaskedLM

from dftune.errors import DftuneError
from dftune.losses import OBJECTIVES
from dftune.models.diffusion_conversion import to_diffusion
from dftune.models.presets import init_model
from dftune.runtime.objective_trainer import ObjectiveTrainer
from dftune.stages.dllm import DiffusionTrainer
from sgd_setup import sgd_args, synthetic_dataset

CASES = [*[(name, ()) for name in sorted(OBJECTIVES)],  # every registered objective, fused where it can be
         ("dft", ("--fused_loss", "false")), ("bft", ("--bft_group_size", "3"))]  # windows across shard boundaries


def write_long_data(path) -> None:
    """Four multi-turn conversations of about 60-120 tokens, every reply a target span."""
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(4):
            messages = []
            for _ in range(rng.randint(2, 3)):
                a, b = rng.randint(0, 999), rng.randint(0, 99)
                messages += [{"role": "user", "content": f"{a}+{b}=" + "x" * rng.randint(0, 12)},
                             {"role": "assistant", "content": str(a + b) * rng.randint(1, 3)}]
            f.write(json.dumps({"messages": messages}) + "\n")


def train(launcher: list[str], model_dir, data, output_dir, loss: str, batch: int, *extra: str) -> list[dict]:
    """The run's logged training entries."""
    argv = [
        *launcher, "-m", "dftune", "train", "--model_name_or_path", str(model_dir), "--data_files", str(data),
        "--torch_dtype", "auto", "--max_length", "256", "--loss", loss, "--optim", "sgd", "--learning_rate", "0.5",
        "--lr_scheduler_type", "constant", "--max_grad_norm", "0", "--max_steps", "2", "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--seed", "0", "--disable_tqdm", "true",
        "--train_sampling_strategy", "sequential", "--per_device_train_batch_size", str(batch),
        "--gradient_accumulation_steps", "2", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = processes.run(argv, step=f"training {loss} on {output_dir.name}", timeout=300, env=env,
                           capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (output_dir / "stderr.txt").write_text(result.stderr, encoding="utf-8")
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [e for e in state["log_history"] if "loss" in e and "train_runtime" not in e]


@pytest.fixture(scope="module")
def float64_model(tiny_model_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("sp") / "float64-model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def float64_diffusion_models(tmp_path_factory) -> dict[str, object]:
    """Stage dllm's two kinds of model, float64: the tiny-dllm preset (position i predicts token i) and an
    autoregressive model turned into a diffusion one (`init-model --diffusion`: logits shifted)."""
    root = tmp_path_factory.mktemp("sp-dllm")
    converted = to_diffusion(init_model("tiny-llama", root / "converted", dtype=torch.float64))
    return {"tiny-dllm": init_model("tiny-dllm", root / "tiny-dllm", dtype=torch.float64), "converted": converted}


def assert_same_update(start_dir, one_dir, two_dir, weights: str = "model.safetensors") -> None:
    """Each parameter's update in `two_dir` equals `one_dir`'s to 1e-5 relative, and something moved. A LoRA adapter
    (no `weights` in `start_dir`) is compared as trained: its B matrices start at zero, so they are their updates."""
    one, two = load_file(one_dir / weights), load_file(two_dir / weights)
    start = load_file(start_dir / weights) if (start_dir / weights).exists() else {}
    updates = {name: value - start.get(name, torch.zeros_like(value)) for name, value in one.items()}
    moved = [name for name, update in updates.items() if update.norm() > 0]
    for name in moved:
        assert (two[name] - one[name]).norm() / updates[name].norm() < 1e-5, name
    assert moved and max(updates[name].abs().max().item() for name in moved) > 1e-6


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "extra"), CASES)
def test_sequence_parallel_matches_one_process(float64_model, tmp_path, loss, extra, torchrun):
    data = tmp_path / "data.jsonl"
    write_long_data(data)
    sharded = train(torchrun(), float64_model, data, tmp_path / "sp", loss, 1, "--sequence_parallel_size", "2", *extra)
    whole = train([sys.executable], float64_model, data, tmp_path / "one", loss, 2, *extra)
    assert_same_update(float64_model, tmp_path / "one", tmp_path / "sp")
    assert len(sharded) == len(whole) == 2  # logged once, by the main process
    for a, b in zip(sharded, whole):
        for key in ("loss", "ce", "avg_p_correct", "token_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    if loss == "bft":  # a per-sample metric: each sample once, from its whole sequence
        assert sharded[-1]["bft_sample_weight"] == pytest.approx(whole[-1]["bft_sample_weight"], rel=1e-9)


def test_precomputed_reference_is_a_config_error(tiny_model_dir, tmp_path):
    """iw_sft's precomputed reference log-probs are a column of whole rows: refused at parse time, naming the fix."""
    data = tmp_path / "data.jsonl"
    write_long_data(data)
    argv = [sys.executable, "-m", "dftune", "train", "--model_name_or_path", str(tiny_model_dir), "--data_files",
            str(data), "--loss", "iw_sft", "--precompute_ref_log_probs", "true", "--sequence_parallel_size", "2",
            "--output_dir", str(tmp_path / "out")]
    result = processes.run(argv, step="parsing precompute_ref_log_probs", timeout=120, capture_output=True, text=True)
    assert result.returncode != 0
    assert "cannot use precompute_ref_log_probs with loss: iw_sft" in result.stderr
    assert "Traceback" not in result.stderr


def test_what_stage_dllm_cannot_shard_is_an_error(float64_diffusion_models, tmp_path):
    """Block diffusion ([noisy, clean] rows, block-causal) and masked LMs (their own position embeddings) say so,
    before any process group is needed."""
    args = sgd_args(str(tmp_path), batch=1, accumulation=1, steps=1)
    dllm = AutoModelForCausalLM.from_pretrained(float64_diffusion_models["tiny-dllm"])
    with pytest.raises(DftuneError, match="cannot shard block diffusion"):
        DiffusionTrainer(model=dllm, args=args, train_dataset=synthetic_dataset(2), objective="sft", block_size=4,
                         sequence_parallel_size=2)  # fmt: skip
    bert = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))  # fmt: skip
    with pytest.raises(DftuneError, match="not the masked LM bert"):
        DiffusionTrainer(model=bert, args=args, train_dataset=synthetic_dataset(2), objective="sft",
                         sequence_parallel_size=2)


def test_sequence_parallel_needs_a_process_group(tiny_model_dir, tmp_path):
    """One process asked to share sequences with a second: an error saying how to launch, not an unsharded run."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(DftuneError, match="torchrun --nproc_per_node 2"):
        ObjectiveTrainer(model=model, args=sgd_args(str(tmp_path), batch=1, accumulation=1, steps=1),
                         train_dataset=synthetic_dataset(2), objective="sft", objective_kwargs={},
                         sequence_parallel_size=2)


ATTENTION_CHECK = '''
import sys, torch, torch.distributed as dist
from torch import nn
from torch.nn.functional import pad, scaled_dot_product_attention
from dftune.runtime.sequence_parallel import sequence_group, ulysses_attention, whole_key_mask

dist.init_process_group("gloo")
group = sequence_group(2)
causal = sys.argv[2] == "causal"
torch.manual_seed(0)
b, heads, kv_heads, t, d = 2, 4, 2, 10, 3  # grouped-query attention, 5 positions per shard
real = t if causal else t - 1  # full attention: 9 real positions, the 10th rounds the length up and is masked
q, k, v = (torch.randn(b, n, t, d, dtype=torch.float64, requires_grad=True) for n in (heads, kv_heads, kv_heads))
# Reference, from the formula: softmax(q k^T / sqrt(d)) v over the real positions (causal or full), each key/value
# head serving 2 query heads; zero at the padded position, which the loss below does not weigh.
ref = scaled_dot_product_attention(q[:, :, :real], k.repeat_interleave(2, 1)[:, :, :real],
                                   v.repeat_interleave(2, 1)[:, :, :real], is_causal=causal)
ref = pad(ref.transpose(1, 2), (0, 0, 0, 0, 0, t - real))  # [B, T, H, D], as attention implementations return it
weight = torch.randn_like(ref)
weight[:, real:] = 0
(ref * weight).sum().backward()
cut = slice(group.rank * 5, (group.rank + 1) * 5)
module = nn.Module()
module.num_key_value_groups, module.is_causal = 2, causal
local = [x.detach()[:, :, cut].clone().requires_grad_() for x in (q, k, v)]
local_mask = (torch.arange(t) < real)[cut].expand(b, -1)  # this shard's key mask, made whole by the mask function
mask = None if causal else whole_key_mask(attention_mask=local_mask, group=group.group, causal=False)
out, _ = ulysses_attention(module, *local, mask, group=group.group, causal=causal, scaling=d ** -0.5, dropout=0.0)
(out * weight[:, cut]).sum().backward()
kept = weight[:, cut] != 0
errors = [((out - ref[:, cut]) * kept).abs().max().item()]
errors += [(mine.grad - whole.grad[:, :, cut]).abs().max().item() for mine, whole in zip(local, (q, k, v))]
open(f"{sys.argv[1]}/errors-{group.rank}.txt", "w").write(" ".join(map(str, errors)))
dist.destroy_process_group()  # exiting with gloo's threads alive can abort the process
'''


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["causal", "full"])
def test_ulysses_attention_values_and_gradients(tmp_path, torchrun, attention):
    """Each shard's output and the gradients of its q, k, v equal attention over the whole sequence, cut to the
    shard (float64; grouped-query heads; a loss weighting every output differently): causal (stage sft), and full
    with the group's key mask hiding a position that pads the length (stage dllm; no gradient reaches it)."""
    script = tmp_path / "check.py"
    script.write_text(ATTENTION_CHECK, encoding="utf-8")
    result = processes.run([*torchrun(), str(script), str(tmp_path), attention], step="ulysses attention on 2 "
                           "processes", timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):  # each rank's errors: output, then the gradients of q, k, v
        errors = [float(e) for e in (tmp_path / f"errors-{rank}.txt").read_text().split()]
        assert len(errors) == 4 and max(errors) < 1e-12, (rank, errors)


IGNORED_ATTENTION = '''
import sys
from transformers import AutoModelForCausalLM
from dftune.data.collate import DataCollatorForChat
from dftune.errors import DftuneError
from dftune.runtime.objective_trainer import ObjectiveTrainer
from sgd_setup import sgd_args, synthetic_dataset

model = AutoModelForCausalLM.from_pretrained(sys.argv[2])
trainer = ObjectiveTrainer(model=model, args=sgd_args(sys.argv[1], batch=1, accumulation=1, steps=1),
                           train_dataset=synthetic_dataset(4), data_collator=DataCollatorForChat(pad_token_id=0),
                           objective="sft", objective_kwargs={}, sequence_parallel_size=2)
model.config._attn_implementation_internal = "sdpa"  # as remote code with its own attention: ours never runs
try:
    trainer.train()
except DftuneError as err:
    open(f"{sys.argv[1]}/error-{trainer.args.process_index}.txt", "w").write(str(err))
'''


@pytest.mark.slow
def test_a_model_whose_attention_ignores_the_shards_is_an_error(tiny_model_dir, tmp_path, torchrun):
    """A model whose attention does not run through transformers' AttentionInterface would attend within each
    shard alone: the first training step says so on every process, instead of training that."""
    script = tmp_path / "check.py"
    script.write_text(IGNORED_ATTENTION, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = processes.run([*torchrun(), str(script), str(tmp_path), str(tiny_model_dir)], step="an ignored "
                           "attention on 2 processes", timeout=120, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        message = (tmp_path / f"error-{rank}.txt").read_text()
        assert "cannot shard LlamaForCausalLM: its attention does not run through" in message, message


@pytest.mark.parametrize(("stage", "extra", "message"), [
    ("dpo", (), "shards stage sft and dllm, not stage dpo"),
    ("dllm", ("--diffusion_block_size", "4"), "cannot shard block diffusion (diffusion_block_size"),
])  # fmt: skip
def test_what_cannot_shard_is_a_config_error(tiny_model_dir, tmp_path, stage, extra, message):
    """Stage dpo (TRL's loss) and block diffusion: a parse-time error, not an unsharded run."""
    argv = [sys.executable, "-m", "dftune", "train", "--stage", stage, "--model_name_or_path", str(tiny_model_dir),
            "--data_files", str(tmp_path / "data.jsonl"), "--sequence_parallel_size", "2", *extra,
            "--output_dir", str(tmp_path / "out")]
    result = processes.run(argv, step=f"parsing stage {stage}", timeout=120, capture_output=True, text=True)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


DLLM_CASES = [  # (model, loss, extra)
    ("tiny-dllm", "sft", ()),
    ("tiny-dllm", "sft", ("--finetuning_type", "lora", "--lora_target", "all", "--lora_dropout", "0")),
    ("converted", "dft", ("--fused_loss", "true", "--noise_schedule", "cosine")),  # logits shifted over whole rows
]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "loss", "extra"), DLLM_CASES)
def test_stage_dllm_sequence_parallel_matches_one_process(float64_diffusion_models, tmp_path, torchrun, model, loss,
                                                          extra):  # fmt: skip
    """Stage dllm, 2 processes x batch 1 with sequence_parallel_size 2 against 1 process x batch 2: the group's
    first rank noises the gathered rows with the draws one process makes for the same batch, so updates, logged
    losses and the evaluation agree to rounding; its evaluation samples decode on the main process alone."""
    data, start = tmp_path / "data.jsonl", float64_diffusion_models[model]
    write_long_data(data)
    common = ("--stage", "dllm", "--eval_files", str(data), "--eval_strategy", "steps", "--eval_steps", "2",
              "--max_new_tokens", "4", "--steps", "2", *extra)  # fmt: skip
    train(torchrun(), start, data, tmp_path / "sp", loss, 1, "--sequence_parallel_size", "2",
          "--per_device_eval_batch_size", "1", *common)  # fmt: skip
    train([sys.executable], start, data, tmp_path / "one", loss, 2, "--per_device_eval_batch_size", "2", *common)
    lora = "lora" in extra
    assert_same_update(start, tmp_path / "one", tmp_path / "sp",
                       "adapter_model.safetensors" if lora else "model.safetensors")  # fmt: skip
    sharded, whole = (json.loads((tmp_path / run / "trainer_state.json").read_text())["log_history"]
                      for run in ("sp", "one"))  # fmt: skip
    logged = lambda log: [(key, e[key]) for e in log for key in ("loss", "ce", "eval_loss", "eval_ce") if key in e]
    assert [key for key, _ in logged(sharded)] == [key for key, _ in logged(whole)] and len(logged(whole)) == 6
    for (key, a), (_, b) in zip(logged(sharded), logged(whole)):
        assert a == pytest.approx(b, rel=1e-9), key
    samples = [json.loads(line) for line in (tmp_path / "sp" / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(row["decode_steps"] >= 1 for row in samples)


@pytest.mark.slow
def test_sequence_parallel_evaluation_matches_one_process(float64_model, tmp_path, torchrun):
    """Evaluation shards too: eval_loss and eval_ce over the whole eval set equal the unsharded run's."""
    data = tmp_path / "data.jsonl"
    write_long_data(data)
    evaluating = ("--eval_files", str(data), "--eval_strategy", "steps", "--eval_steps", "2")
    train(torchrun(), float64_model, data, tmp_path / "sp", "dft", 1, "--sequence_parallel_size", "2",
          "--per_device_eval_batch_size", "1", *evaluating)
    train([sys.executable], float64_model, data, tmp_path / "one", "dft", 2, "--per_device_eval_batch_size", "2",
          *evaluating)
    sharded, whole = ([e for e in json.loads((tmp_path / run / "trainer_state.json").read_text())["log_history"]
                       if "eval_loss" in e] for run in ("sp", "one"))
    assert len(sharded) == len(whole) == 1
    for key in ("eval_loss", "eval_ce", "eval_avg_p_correct"):
        assert sharded[0][key] == pytest.approx(whole[0][key], rel=1e-9), key
