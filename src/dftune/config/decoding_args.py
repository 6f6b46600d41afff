"""The decoding keys of a masked-diffusion LM, defined once: `dftune generate` and `dftune eval` make their flags from
this dataclass (`dftune.cli.decoding_flags`), stage dllm's keys include it (its evaluation samples decode so), and
`dftune.diffusion.decode` takes it. Light on purpose (no torch): `--help` imports it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal, get_args

from dftune.numbers import Range, out_of_range

Remasking = Literal["low_confidence", "random", "margin", "entropy"]
Cache = Literal["none", "prefix", "dual"]
REMASKING: tuple[str, ...] = get_args(Remasking)
USED_BY = "decoding (generate, eval, stage dllm's eval samples)"


@dataclass
class DecodingArguments:
    """How a masked-diffusion LM decodes (LLaDA's sampler, Dream's remasking names, Fast-dLLM's threshold)."""

    ranges: ClassVar[dict[str, Range]] = {
        "max_new_tokens": Range(1), "min_new_tokens": Range(0), "steps": Range(1), "block_length": Range(1),
        "temperature": Range(0), "threshold": Range(0, low_open=True), "cfg_scale": Range(0),
    }
    diffusion_only: ClassVar[tuple[str, ...]] = (
        "steps", "block_length", "remasking", "threshold", "cfg_scale", "cache",
    )

    max_new_tokens: int = field(default=64, metadata={"help": f"{USED_BY}: tokens generated after the prompt."})
    min_new_tokens: int = field(
        default=0,
        metadata={"help": f"{USED_BY}: EOS is never predicted in the first N new tokens (its logit is -inf there, "
                  "as HF generate's min_new_tokens; N = max_new_tokens is LLaDA's logits_eos_inf)."},
    )
    steps: int | None = field(
        default=None,
        metadata={"help": f"{USED_BY}, diffusion: denoising steps in all (default max_new_tokens: one token per "
                  "step); a multiple of the number of blocks."},
    )
    block_length: int | None = field(
        default=None,
        metadata={"help": f"{USED_BY}, diffusion: semi-autoregressive block, filled left to right (default "
                  "max_new_tokens: one block); divides max_new_tokens."},
    )
    temperature: float = field(default=0.0, metadata={"help": f"{USED_BY}: 0 is greedy (argmax), else sampling."})
    remasking: Remasking = field(
        default="low_confidence",
        metadata={"help": f"{USED_BY}, diffusion: which masked positions a step unmasks first, by confidence: "
                  "low_confidence (top-1 probability), margin (top-1 minus top-2 probability), entropy (minus the "
                  "entropy of the prediction), random (uniform, seeded). Dream's alg names (maskgit_plus, "
                  "topk_margin, entropy, origin)."},
    )
    threshold: float | None = field(
        default=None,
        metadata={"help": f"{USED_BY}, diffusion: instead of fixed steps, each step unmasks every masked position of "
                  "the block whose confidence passes it, at least one (Fast-dLLM): low_confidence, top-1 "
                  "probability above it; margin, top-1 minus top-2 above it (both in (0, 1]; 1 is one token per "
                  "step); entropy, entropy below it in nats (EB-Sampler; above 0). Not with random nor steps."},
    )
    cfg_scale: float = field(
        default=0.0,
        metadata={"help": f"{USED_BY}, diffusion: classifier-free guidance, logits u + (cfg_scale + 1) (c - u) "
                  "with u the logits given a masked prompt (LLaDA); 0 is off."},
    )

    cache: Cache = field(
        default="none",
        metadata={"help": f"{USED_BY}, diffusion: none recomputes every position each step. A block-diffusion model "
                  "(trained with diffusion_block_size): prefix keeps the finished blocks' keys and values and runs "
                  "only the current block, the same tokens faster; dual is prefix there (no later block is seen). "
                  "A full-attention model: Fast-dLLM's approximate caches, refreshed at each block's first step "
                  "(tokens may differ from none): prefix reuses the keys and values before the block, dual those "
                  "after it too and runs the block alone."},
    )

    def __post_init__(self) -> None:
        for f in fields(DecodingArguments):
            if error := out_of_range(f.name, getattr(self, f.name), DecodingArguments.ranges):
                raise error
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {', '.join(REMASKING)}, got {self.remasking!r}")
        if self.cache not in get_args(Cache):
            raise ValueError(f"cache must be one of {', '.join(get_args(Cache))}, got {self.cache!r}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} is above max_new_tokens {self.max_new_tokens}")
        if self.max_new_tokens % self.block_length_or_all():
            raise ValueError(f"block_length {self.block_length} must divide max_new_tokens {self.max_new_tokens}")
        if self.steps is not None and self.steps % self.num_blocks():
            raise ValueError(f"steps {self.steps} must be a multiple of the number of blocks {self.num_blocks()} "
                             f"(max_new_tokens {self.max_new_tokens} / block_length {self.block_length})")
        self._check_threshold()

    def _check_threshold(self) -> None:
        if self.threshold is None:
            return
        if self.steps is not None:
            raise ValueError("threshold decides the number of steps itself: give threshold or steps, not both")
        if self.remasking == "random":
            raise ValueError("threshold needs a confidence to compare (low_confidence, margin or entropy); random "
                             "remasking has none: use steps with random")
        if self.remasking != "entropy" and self.threshold > 1.0:
            raise ValueError(f"threshold must be in (0, 1] with remasking {self.remasking} (a probability), got "
                             f"{self.threshold}")

    def decoding(self) -> DecodingArguments:
        """These keys alone, from a section that includes them (stage dllm's `DllmArguments`)."""
        return DecodingArguments(**{f.name: getattr(self, f.name) for f in fields(DecodingArguments)})

    def diffusion_keys_given(self) -> list[str]:
        """The keys only a diffusion LM uses (steps, remasking, ...) that are not at their defaults: a causal
        model's decoding refuses them rather than ignore them."""
        default = DecodingArguments(max_new_tokens=self.max_new_tokens)
        return [key for key in self.diffusion_only if getattr(self, key) != getattr(default, key)]

    def block_length_or_all(self) -> int:
        """The block length in effect: one block of max_new_tokens unless given."""
        return self.block_length or self.max_new_tokens

    def num_blocks(self) -> int:
        return self.max_new_tokens // self.block_length_or_all()

    def steps_per_block(self) -> int:
        """Fixed steps per block (default one token per step)."""
        return (self.steps or self.max_new_tokens) // self.num_blocks()
