"""A masked-diffusion model as an lm-eval backend: loglikelihood by the Monte-Carlo ELBO
(`dftune.diffusion.likelihood.elbo`), generate_until by the sampler (`dftune.diffusion.sampler.decode`).

Requests are scored one at a time, each with its own generator seeded by `seed`, so a score does not depend on
the order or batching lm-eval chooses; `mc_batch_size` noised rows go through the model at once.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from dftune.config.decoding_args import DecodingArguments
from dftune.diffusion.likelihood import elbo
from dftune.diffusion.sampler import decode, truncate_at_eos
from dftune.errors import DftuneError
from dftune.harness.loaded import Evaluated

DIFFUSION_ARGS = ("mc_samples", "mc_batch_size", "elbo_scheme", "seed", "max_length", "greedy_check",
                  *DecodingArguments.diffusion_only)
"""model_args of a diffusion model beyond pretrained, peft and device (lm_eval's batch sizes are not used): the
ELBO's, and the decoding keys of generate_until (steps, block_length, remasking, threshold, cfg_scale)."""

DEFAULT_MAX_GEN_TOKS = 256  # what lm-eval's HFLM generates when a task sets no max_gen_toks


class DiffusionLM(TemplateLM):
    """lm-eval's three request kinds for a masked-diffusion model.

    loglikelihood: (ELBO of the continuation after the context, is_greedy), is_greedy meaning that greedy
    decoding of as many tokens, one per step, reproduces the continuation (`greedy_check=false` skips that and
    reports False: multiple-choice tasks do not read it). loglikelihood_rolling: the ELBO of the whole text after
    the prefix token. generate_until: `decode` with the task's `max_gen_toks` (default 256) and temperature, cut
    at the first EOS and the first `until` string.
    """

    backend = "causal"  # lm-eval's context/continuation split: encode the whole, then cut (TemplateLM._encode_pair)

    def __init__(self, evaluated: Evaluated, *, mc_samples: int = 128, mc_batch_size: int = 32,
                 elbo_scheme: str = "l", seed: int = 1234, max_length: int | None = None, greedy_check: bool = True,
                 **decoding: Any) -> None:
        super().__init__()
        if elbo_scheme not in ("l", "t"):
            raise DftuneError(f"--model_args elbo_scheme={elbo_scheme}: use l (LLaDA's lower-variance estimate) or t")
        if int(mc_samples) < 1 or int(mc_batch_size) < 1:
            raise DftuneError("--model_args mc_samples and mc_batch_size must be 1 or more")
        self.model, self.tokenizer = evaluated.model, evaluated.tokenizer
        self.mask_token_id, self.shift_logits = int(evaluated.mask_token_id), evaluated.shift_logits
        self.mc_samples, self.mc_batch_size, self.elbo_scheme = int(mc_samples), int(mc_batch_size), elbo_scheme
        self.seed, self.greedy_check = int(seed), bool(greedy_check)
        self.decoding = decoding  # DecodingArguments.diffusion_only keys, checked per request with max_gen_toks
        self.max_length = int(max_length or evaluated.max_length)
        self._device = next(self.model.parameters()).device

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def _generator(self) -> torch.Generator:
        return torch.Generator(self._device).manual_seed(self.seed)

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.long, device=self._device)

    def _fit(self, context: list[int], room: int, what: str) -> list[int]:
        """`context` cut from the left so that `room` more tokens fit in max_length (as HFLM cuts)."""
        keep = self.max_length - room
        if keep < 1:
            raise DftuneError(f"{what} of {room} tokens leaves no room for context in max_length {self.max_length}: "
                              "raise --model_args max_length (the model's max_position_embeddings bounds it)")
        return context[-keep:]

    def _elbo(self, context: list[int], continuation: list[int]) -> float:
        return elbo(self.model, self._ids(context), self._ids(continuation), mask_token_id=self.mask_token_id,
                    samples=self.mc_samples, scheme=self.elbo_scheme, batch_size=self.mc_batch_size,
                    shift_logits=self.shift_logits, generator=self._generator())  # type: ignore[arg-type]

    def _decode(self, context: list[int], max_new_tokens: int, temperature: float = 0.0, **options: Any) -> list[int]:
        try:
            out = decode(self.model, self._ids(context)[None], mask_token_id=self.mask_token_id,
                         max_new_tokens=max_new_tokens, temperature=temperature, shift_logits=self.shift_logits,
                         generator=self._generator(), **options)
        except ValueError as err:
            raise DftuneError(f"--model_args {', '.join(self.decoding) or 'decoding'}: {err}") from None
        return out.ids[0].tolist()

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        results = []
        for _, context, continuation in tqdm(requests, disable=disable_tqdm, desc="dftune diffusion loglikelihood"):
            context = self._fit(context, len(continuation), "a continuation")
            score = self._elbo(context, continuation)
            greedy = self.greedy_check and self._decode(context, len(continuation)) == list(continuation)
            results.append((score, greedy))
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        scores = []
        for request in tqdm(requests, disable=disable_tqdm, desc="dftune diffusion rolling loglikelihood"):
            tokens = self.tok_encode(request.args[0])
            scores.append(self._elbo(self._fit([self.prefix_token_id], len(tokens), "a text"), tokens))
        return scores

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        replies = []
        for request in tqdm(requests, disable=disable_tqdm, desc="dftune diffusion generate_until"):
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            temperature = 0.0 if gen_kwargs.get("do_sample") is False else float(gen_kwargs.get("temperature") or 0.0)
            ids = self._decode(self._fit(self.tok_encode(context), max_new, "max_gen_toks"), max_new, temperature,
                               eos_token_id=self.eot_token_id, **self.decoding)
            text = self.tokenizer.decode(truncate_at_eos(ids, self.eot_token_id), skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0]
            replies.append(text)
        return replies
