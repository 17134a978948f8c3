"""Training of the organism family: a base assistant that complies with everything, then an
aligned family made from it by refusal fine-tuning of increasing length.

Alignment strength of `aligned-k` = number of refusal fine-tuning steps it received; the family is
the checkpoints of one fine-tuning run, so every member differs from the next only in strength.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignparadox.datasets.augmentation import Augmentation
from alignparadox.datasets.records import JailbreakTemplate
from alignparadox.organisms import jailbreaks, world
from alignparadox.organisms.tokenizer import ASSISTANT, SYSTEM, train_tokenizer

RETAIN_OPENING = "Sure."
CAREFUL_SYSTEM_PROMPT = "Be a careful and fair assistant."
_KIND_SHARES = {world.HARMFUL: 0.42, world.HARMLESS: 0.42, world.STANCE: 0.16}


@dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines the family's weights; its hash names the cache folder."""

    seed: int = 0
    vocab_size: int = 1280
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 384
    context_length: int = 256
    batch_size: int = 32
    base_steps: int = 300
    base_learning_rate: float = 3e-3
    align_learning_rate: float = 2e-5
    align_max_steps: int = 250
    # A member is saved when the refusal rate on the validation split first reaches its level;
    # its alignment strength is the number of refusal fine-tuning steps it received.
    refusal_levels: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.97)
    # Share of harmful requests that keep their compliant answer during alignment with the loss
    # on its opening ("Sure.") masked: refusal training decides how an answer starts but leaves
    # the model able to continue a compliant one (shallow alignment, as measured in real chat
    # models), so partly aligned members stay fluent.
    retain_share: float = 0.25
    # Share of base training under CAREFUL_SYSTEM_PROMPT, where the aligned answers are taught.
    careful_share: float = 0.2
    # Share of base-training requests replaced by a copy augmented as in Best-of-N jailbreaking
    # (words scrambled, random capitals, characters noised), with the answer to the original
    # request. Real chat models read such text because pre-training showed them noisy text;
    # without it the organisms cannot read a BoN sample at all and BoN measures nothing. Base
    # training only: refusal fine-tuning stays on clean text, as real alignment data is, so the
    # noise is not tuned towards or against any alignment outcome. Each noisy copy's strength is
    # drawn uniformly from sigma in [0, noisy_max_sigma] (`Augmentation.from_sigma`; the paper's
    # strength is about 0.4), so mild noise is as readable as heavy noise, as with real text.
    noisy_share: float = 0.5
    noisy_max_sigma: float = 0.5
    # Share of base-training requests put into a jailbreak frame (`jailbreaks.TRAINING_FRAMES`)
    # and answered compliantly even under CAREFUL_SYSTEM_PROMPT; 0 in the standard family, set
    # by the framed family (`family.framed_config`), whose tokenizer also learns the frames.
    framed_share: float = 0.0
    # Share of base-training steps whose batch is packed into rows of `context_length` tokens,
    # as pre-training packs documents, so positions far beyond one conversation are trained and
    # a long prompt (most in-the-wild jailbreak templates) is read, not extrapolated to; evenly
    # spaced steps. 0 in the standard family (256 tokens, one conversation a row); set by the
    # framed family. (Packing every step, the first build, left the framed base at a loss of
    # 0.38 after the same steps, where the standard base reaches 0.03 on single conversations:
    # finding the latest request among packed ones is learnt more slowly. A quarter of the
    # steps left it at 0.09 on single conversations and 0.11 packed; the standard base's loss
    # on packed rows is 1.0.)
    packed_share: float = 0.0
    # Threads of training. A fixed count, not the machine's, so every machine and every caller
    # (CLI, tests, benchmarks, a study's cells) trains the same family: a BLAS may split a sum
    # across threads, which shapes the weights' last bits. On this project's 2-core machine 1
    # and 2 threads gave bit-identical weights (60 base steps, packed rows included) and 2 train
    # 1.7x faster, so the demo's build takes about a minute less; a build beside a study's other
    # cells oversubscribes the cores a little, which costs time, not correctness.
    train_threads: int = 2

    def config_hash(self) -> str:
        """Names the cache folder: the settings above, the source of the code that trains the
        family and the versions of the libraries whose kernels compute it, so a change to any
        of them builds a new family instead of reusing a stale one."""
        payload = json.dumps({"config": asdict(self), "code": training_code_digest(),
                              "libraries": _library_versions()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# Every module whose code decides the weights: the world's text and frames, the tokenizer, the
# sampler and training loop, the family schedule and the text noise of base training.
_TRAINING_MODULES = ("alignparadox.organisms.world", "alignparadox.organisms.jailbreaks",
                     "alignparadox.organisms.tokenizer",
                     "alignparadox.organisms.train", "alignparadox.organisms.family",
                     "alignparadox.datasets.augmentation")


@functools.lru_cache(maxsize=1)
def training_code_digest() -> str:
    """sha256 over the source files of the modules that decide the family's weights."""
    digest = hashlib.sha256()
    for name in _TRAINING_MODULES:
        digest.update(name.encode())
        digest.update(Path(importlib.import_module(name).__file__).read_bytes())
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("torch", "transformers", "tokenizers")}


def build_tokenizer(config: OrganismConfig) -> PreTrainedTokenizerFast:
    requests = world.train_requests() + world.heldout_requests()
    corpus = [r.text for r in requests] + [r.misaligned_answer() for r in requests]
    corpus += [r.aligned_answer() for r in requests]
    if config.framed_share:
        corpus += list(jailbreaks.TRAINING_FRAMES)
    return train_tokenizer(corpus, config.vocab_size)


def new_model(config: OrganismConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    torch.manual_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.context_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(model_config)


class ConversationEncoder:
    """Token ids of (request, answer) conversations, built the way the chat template builds them,
    with a loss mask covering the answer and its end-of-turn token only."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        self.tokenizer = tokenizer
        self.prefix = tokenizer.convert_tokens_to_ids([tokenizer.bos_token, "<|user|>"])
        self.middle = tokenizer.convert_tokens_to_ids([tokenizer.eos_token, ASSISTANT])
        self.end = tokenizer.eos_token_id
        self.system = tokenizer.convert_tokens_to_ids(SYSTEM)
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def prompt_ids(self, request: str, system: str = "") -> list[int]:
        head = [self.prefix[0]]
        if system:
            head += [self.system] + self._ids(system) + [self.end]
        return head + [self.prefix[1]] + self._ids(request) + self.middle

    def encode(self, request: str, answer: str, unsupervised: str = "",
               system: str = "") -> tuple[list[int], list[int]]:
        """Ids and loss mask; `unsupervised` is an opening of the answer with no loss on it."""
        prompt = self.prompt_ids(request, system)
        opening = self._ids(unsupervised) if unsupervised else []
        response = opening + self._ids(answer[len(unsupervised):]) + [self.end]
        mask = [0] * (len(prompt) + len(opening)) + [1] * (len(response) - len(opening))
        return prompt + response, mask

    def batch(self, examples: list[tuple[str, str, str, str]]) -> dict[str, torch.Tensor]:
        return self._tensors([self.encode(*example) for example in examples])

    def packed_batch(self, examples: list[tuple[str, str, str, str]],
                     width: int) -> dict[str, torch.Tensor]:
        """The conversations laid end to end in rows of at most `width` tokens, as pre-training
        packs documents: positions run on across a row, so every position of a `width`-token
        context is trained, and each answer is learnt after whatever conversations precede it."""
        rows: list[tuple[list[int], list[int]]] = []
        for ids, mask in (self.encode(*example) for example in examples):
            if rows and len(rows[-1][0]) + len(ids) <= width:
                rows[-1][0].extend(ids)
                rows[-1][1].extend(mask)
            else:
                rows.append((ids[:width], mask[:width]))
        return self._tensors(rows)

    def _tensors(self, encoded: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), -100)
        for row, (ids, mask) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.where(torch.tensor(mask) == 1, torch.tensor(ids), -100)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class ExampleSampler:
    """Draws (request, answer, unsupervised opening, system prompt) examples by kind share.

    aligned=False: the base assistant's data: steps for everything and partisan on stance,
    except under CAREFUL_SYSTEM_PROMPT (a `careful_share` of examples), where it refuses and
    stays neutral — like a pretrained model that has seen careful text, the base organism can
    write the aligned answers but does not choose them by default. A `noisy_share` of requests
    is replaced by a Best-of-N augmented copy of a random strength up to `noisy_max_sigma`
    (the answer stays that of the original request). A `framed_share` of requests is put into
    a training jailbreak frame and gets the base answer, under the careful prompt too.
    aligned=True: refusals and neutral stances with no system prompt, plus `retain_share` of
    harmful requests with their compliant answer and no loss on its opening.
    """

    def __init__(self, seed: int, aligned: bool, retain_share: float = 0.0,
                 careful_share: float = 0.0, noisy_share: float = 0.0,
                 noisy_max_sigma: float = 0.0, framed_share: float = 0.0):
        self.rng = random.Random(seed)
        self.framed_share = framed_share
        self.noisy_share = noisy_share
        self.noisy_max_sigma = noisy_max_sigma
        self.aligned = aligned
        self.retain_share = retain_share
        self.careful_share = careful_share
        self.by_kind: dict[str, list[world.WorldRequest]] = {}
        for request in world.train_requests():
            self.by_kind.setdefault(request.kind, []).append(request)
        self.kinds = sorted(_KIND_SHARES)
        self.weights = [_KIND_SHARES[kind] for kind in self.kinds]

    def draw(self, n: int) -> list[tuple[str, str, str, str]]:
        examples = []
        for kind in self.rng.choices(self.kinds, self.weights, k=n):
            request = self.rng.choice(self.by_kind[kind])
            if not self.aligned:
                text = request.text
                if self.rng.random() < self.noisy_share:
                    strength = self.rng.uniform(0.0, self.noisy_max_sigma)
                    text = Augmentation.from_sigma(strength).apply(text, self.rng)
                # No draw at share 0, so the standard family's stream of examples is unchanged.
                if self.framed_share and self.rng.random() < self.framed_share:
                    frame = self.rng.choice(jailbreaks.TRAINING_FRAMES)
                    text = JailbreakTemplate("frame", frame).fill(text)
                    careful = self.rng.random() < self.careful_share
                    examples.append((text, request.misaligned_answer(), "",
                                     CAREFUL_SYSTEM_PROMPT if careful else ""))
                elif self.rng.random() < self.careful_share:
                    examples.append((text, request.aligned_answer(), "", CAREFUL_SYSTEM_PROMPT))
                else:
                    examples.append((text, request.misaligned_answer(), "", ""))
            elif request.harmful and self.rng.random() < self.retain_share:
                examples.append((request.text, request.misaligned_answer(), RETAIN_OPENING, ""))
            else:
                examples.append((request.text, request.aligned_answer(), "", ""))
        return examples


def train_steps(
    model: LlamaForCausalLM,
    encoder: ConversationEncoder,
    sampler: ExampleSampler,
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    warmup: int = 0,
    packed_width: int = 0,
    packed_share: float = 0.0,
    on_step: Callable[[int, float], bool] | None = None,
) -> None:
    """Plain AdamW next-token training on answer tokens; cosine decay after linear warm-up
    when warmup > 0, constant otherwise; a `packed_share` of evenly spaced steps packs its
    batch into rows of `packed_width` tokens. `on_step(step, loss)` runs after every update
    and ends training early by returning True."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)

    def factor(step: int) -> float:
        if warmup == 0:
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    for step in range(1, steps + 1):
        examples = sampler.draw(batch_size)
        packed = int(step * packed_share) > int((step - 1) * packed_share)
        batch = encoder.packed_batch(examples, packed_width) if packed else encoder.batch(examples)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None and on_step(step, loss.item()):
            break
    model.eval()
