"""White-box targets: a Hugging Face causal LM + tokenizer, its chat template, batched generation.

Loading is safe by default: safetensors only (pickle weights need `allow_pickle=True`), no remote
code (`trust_remote_code=True` to opt in), and a model without a chat template is refused unless
one is supplied, because every prompt this toolkit sends is a chat turn.

Decoding is a short hand-written loop over the model's own forward pass with a KV cache rather
than `model.generate`: `generate` silently merges sampling knobs from the checkpoint's
`generation_config.json` (top_k, repetition penalty, min_p, ...), while an audit needs answers
defined by exactly the settings it records — greedy, or temperature + top-p with a seed. The loop
is also a plain generator, which gives token streaming and cancellation without threads.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from alignparadox.batching import BackOff
from alignparadox.errors import UserError
from alignparadox.targets.providers import provider_for

Prompt = str | list[dict]
FinishReason = Literal["stop", "length"]

_SAFE_PATTERNS = ("*.safetensors",)
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
_DTYPE_NAMES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """The device to run on: `preference` if given, else cuda > mps > cpu."""
    if preference is not None:
        try:
            device = torch.device(preference)
        except RuntimeError as error:
            raise UserError(f"unknown device {str(preference)!r}; use cpu, cuda, cuda:N or mps.") \
                from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {str(preference)!r} was asked for but CUDA is not available.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserError(f"device {str(preference)!r} was asked for but MPS is not available.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, preference: str | torch.dtype | None = None) -> torch.dtype:
    """`preference` if given ("bf16", "fp16", "fp32" or a torch dtype), else bf16 on CUDA when
    supported (fp16 otherwise), fp16 on MPS, fp32 on CPU (CPU half-precision matmuls are slow)."""
    if isinstance(preference, torch.dtype):
        return preference
    if preference is not None:
        if preference.lower() not in _DTYPE_NAMES:
            raise UserError(f"unknown dtype {preference!r}; use bf16, fp16 or fp32.")
        return _DTYPE_NAMES[preference.lower()]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def device_map(device: torch.device) -> str:
    """How `from_pretrained` places the weights: "auto" (layers spread over every GPU, loaded
    straight onto them) for plain "cuda" on a machine with several GPUs, so a model bigger than
    one GPU loads; otherwise all of it on `device` ("cuda:1" pins one GPU)."""
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return "auto"
    return str(device)


_default_device_map = device_map  # load_target's `device_map` parameter shadows the name


@dataclass
class GenerationConfig:
    """Decoding settings. `do_sample=False` is greedy; sampling uses temperature and top-p
    (nucleus) only, drawn from a generator seeded with `seed`, so a call is reproducible."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.do_sample and not self.temperature > 0:
            raise UserError(f"temperature must be positive when sampling, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}.")


@dataclass(frozen=True)
class Generation:
    """One answer: decoded text (special tokens skipped), its token ids (stop token excluded),
    and why it ended — "stop" at an end token, "length" at max_new_tokens or the context end."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason


class WhiteBoxTarget:
    """A causal LM under audit, with its tokenizer and chat template.

    `weight_hash` is the sha256 over the bytes of the weight files the model was loaded from, in
    sorted file-name order — the same checkpoint gives the same hash on any machine and dtype. A
    target built from an in-memory model (no `weight_files`) hashes its state dict instead: names,
    dtypes, shapes and bytes in sorted name order, so that hash depends on the loaded dtype. It is
    computed on first access and describes the weights as they were then.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        name: str,
        *,
        weight_files: Sequence[Path] = (),
    ) -> None:
        if not tokenizer.chat_template:
            raise UserError(
                f"model {name!r} has no chat template; pass one with --chat-template "
                "(a Jinja file or template string)."
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.context_length = _context_length(model, tokenizer)
        self._weight_files = sorted(weight_files, key=lambda path: path.name)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.stop_token_ids = _stop_token_ids(model, tokenizer)
        # transformers 5.2x renamed the KV-cache argument `past_key_values` to `cache`.
        forward_parameters = inspect.signature(model.forward).parameters
        self._cache_keyword = "cache" if "cache" in forward_parameters else "past_key_values"

    def __repr__(self) -> str:
        return f"WhiteBoxTarget({self.name!r}, device={self.device}, dtype={self.model.dtype})"

    @cached_property
    def weight_hash(self) -> str:
        digest = hashlib.sha256()
        if self._weight_files:
            for path in self._weight_files:
                with path.open("rb") as handle:
                    while chunk := handle.read(1 << 24):
                        digest.update(chunk)
        else:
            for key, tensor in sorted(self.model.state_dict().items()):
                tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
                digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # -- prompts -------------------------------------------------------------------------------

    def format_chat(self, prompt: Prompt, system: str | None = None) -> str:
        """The prompt as the model's own chat template renders it, ready for the assistant turn.
        A string is one user message; a list is OpenAI-style messages."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as error:  # jinja raises its own types, e.g. for unsupported roles
            raise UserError(f"the chat template of {self.name!r} rejected the messages: {error}") \
                from error

    def token_ids(self, prompt: Prompt, *, chat: bool = True) -> list[int]:
        """Token ids of one prompt. The tokenizer's special tokens (BOS) are added unless the
        text already starts with BOS, as chat templates usually render it themselves."""
        text = self.format_chat(prompt) if chat else prompt
        if not isinstance(text, str):
            raise UserError("a raw (chat=False) prompt must be a string, not a message list.")
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        ids = self.tokenizer(text, add_special_tokens=add_special)["input_ids"]
        if self.context_length is not None and len(ids) > self.context_length:
            raise UserError(
                f"a prompt is {len(ids)} tokens long, more than the {self.context_length}-token "
                f"context of {self.name!r}."
            )
        return ids

    def encode(self, prompts: Sequence[Prompt], *, chat: bool = True) -> dict[str, torch.Tensor]:
        """Left-padded `input_ids` and `attention_mask` on the model's device. With `chat=True`
        each prompt goes through `format_chat`; with `chat=False` strings are used verbatim."""
        return self._pad([self.token_ids(prompt, chat=chat) for prompt in prompts])

    def _pad(self, sequences: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            if ids:
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention_mask[row, width - len(ids):] = 1
        return {"input_ids": input_ids.to(self.device),
                "attention_mask": attention_mask.to(self.device)}

    # -- forward passes ------------------------------------------------------------------------

    @torch.inference_mode()
    def next_token_logits(
        self, prompts: Sequence[Prompt], *, chat: bool = True, batch_size: int = 16
    ) -> torch.Tensor:
        """Float32 logits of the next token after each prompt, shape (len(prompts), vocab).
        Computed without gradients; attacks that need them run their own forward pass."""
        rows = []
        back_off = BackOff(f"next-token logits of {self.name}")
        for start in range(0, len(prompts), batch_size):
            batch = self.encode(prompts[start:start + batch_size], chat=chat)

            def forward(part: slice, batch=batch) -> torch.Tensor:
                inputs = {key: value[part] for key, value in batch.items()}
                output = self.model(**inputs, position_ids=_positions(inputs["attention_mask"]),
                                    use_cache=False, logits_to_keep=1)
                return output.logits[:, -1].float()

            rows += [logits for _, logits in back_off.run(len(batch["input_ids"]), forward)]
        return torch.cat(rows)

    def generate(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | None = None,
        progress: bool = False,
        *,
        chat: bool = True,
    ) -> list[str]:
        """Answers to `prompts` (new text only, special tokens skipped), in prompt order."""
        return [generation.text for generation in self.complete(prompts, config, progress,
                                                                chat=chat)]

    def complete(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | None = None,
        progress: bool = False,
        *,
        chat: bool = True,
    ) -> list[Generation]:
        """Like `generate`, with token ids and finish reasons. Prompts are batched by length
        (longest first, to waste little padding); the result is returned in prompt order. One
        seeded generator serves the whole call, so sampled answers reproduce for the same
        prompts, config and batch size.

        A batch that runs out of memory is split in halves and retried, and later batches keep
        the smaller size (greedy answers stay the same; sampled ones then follow the smaller
        batches); only a single prompt that does not fit is a UserError."""
        config = config or GenerationConfig()
        encoded = [self.token_ids(prompt, chat=chat) for prompt in prompts]
        order = sorted(range(len(encoded)), key=lambda index: -len(encoded[index]))
        batches = [order[start:start + config.batch_size]
                   for start in range(0, len(order), config.batch_size)]
        generator = self._generator(config)
        results: list[Generation | None] = [None] * len(encoded)
        back_off = BackOff(f"generating with {self.name}")

        def decode(rows: list[int]) -> list[list[int]]:
            steps = list(self._decode(self._pad([encoded[index] for index in rows]), config,
                                      generator))
            return torch.stack(steps, 1).tolist() if steps else [[] for _ in rows]

        for batch in _progress(batches, progress, f"generating with {self.name}"):
            for part, new_tokens in back_off.run(len(batch),
                                                 lambda part, rows=batch: decode(rows[part])):
                for index, tokens in zip(batch[part], new_tokens, strict=True):
                    results[index] = self._finish(tokens, config)
        return results  # type: ignore[return-value]

    def stream(self, prompt: Prompt, config: GenerationConfig | None = None, *,
               chat: bool = True) -> TextStream:
        """Generate one answer incrementally; iterate for text pieces. Closing the stream early
        stops generation. Same tokens as `complete([prompt], config)`."""
        config = config or GenerationConfig()
        batch = self._pad([self.token_ids(prompt, chat=chat)])
        return TextStream(self, self._decode(batch, config, self._generator(config)), config)

    def _generator(self, config: GenerationConfig) -> torch.Generator | None:
        if not config.do_sample:
            return None
        return torch.Generator(device=self.device).manual_seed(config.seed)

    def _finish(self, tokens: list[int], config: GenerationConfig) -> Generation:
        stop = next((i for i, token in enumerate(tokens) if token in self.stop_token_ids), None)
        kept = tokens if stop is None else tokens[:stop]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Generation(text, kept, "stop" if stop is not None else "length")

    @torch.inference_mode()
    def _decode(
        self, batch: dict[str, torch.Tensor], config: GenerationConfig,
        generator: torch.Generator | None,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of every row, step by step, until all rows have produced a stop
        token, `max_new_tokens` is reached, or the context is full. Positions come from the
        attention mask, so a left-padded row decodes exactly as it would alone."""
        attention_mask = batch["attention_mask"]
        positions = _positions(attention_mask)
        room = (self.context_length or 1 << 62) - batch["input_ids"].shape[1]
        steps = min(config.max_new_tokens, room)
        stop_ids = torch.tensor(sorted(self.stop_token_ids), device=self.device)
        finished = torch.zeros(len(attention_mask), dtype=torch.bool, device=self.device)
        output = self.model(input_ids=batch["input_ids"], attention_mask=attention_mask,
                            position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = getattr(output, self._cache_keyword)
        for step in range(steps):
            # Under device_map="auto" the logits come off the last GPU, the inputs go to the
            # first one: pick the token where the inputs and the generator live.
            token = _pick(output.logits[:, -1].float().to(self.device), config, generator)
            token = torch.where(finished, self.pad_token_id, token)
            yield token
            finished |= torch.isin(token, stop_ids)
            if bool(finished.all()) or step == steps - 1:
                return
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            output = self.model(input_ids=token[:, None], attention_mask=attention_mask,
                                position_ids=positions, use_cache=True, logits_to_keep=1,
                                **{self._cache_keyword: cache})


class TextStream:
    """Text pieces of one answer as they are generated. After iteration, `generation` holds the
    full `Generation`; the concatenated pieces equal its text. Pieces that would end inside a
    multi-byte character are held back until the character is complete."""

    def __init__(self, target: WhiteBoxTarget, steps: Iterator[torch.Tensor],
                 config: GenerationConfig) -> None:
        self._target, self._steps, self._config = target, steps, config
        self.generation: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        tokens: list[int] = []
        emitted = ""
        for step in self._steps:
            token = int(step[0])
            tokens.append(token)
            if token in self._target.stop_token_ids:
                break
            text = self._target.tokenizer.decode(tokens, skip_special_tokens=True)
            complete = not text.endswith("\ufffd") and text.startswith(emitted)
            if complete and len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        self.generation = self._target._finish(tokens, self._config)
        if len(self.generation.text) > len(emitted):
            yield self.generation.text[len(emitted):]

    def close(self) -> None:
        """Stop generating (e.g. the client went away)."""
        self._steps.close()  # type: ignore[attr-defined]


def _pick(logits: torch.Tensor, config: GenerationConfig,
          generator: torch.Generator | None) -> torch.Tensor:
    if not config.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / config.temperature, dim=-1)
    if config.top_p < 1:
        sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= config.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, sorted_ids, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _progress(items: list, enabled: bool, description: str):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)


def _context_length(model: PreTrainedModel, tokenizer) -> int | None:
    config = model.config.get_text_config()
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length",
                      "seq_length", "n_ctx"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000_000 else None


def _stop_token_ids(model: PreTrainedModel, tokenizer) -> frozenset[int]:
    """EOS of the tokenizer and of the generation config, plus the chat template's end-of-turn
    token when it is a different special token (e.g. Llama 3's <|eot_id|>, Qwen's <|im_end|>)."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(item) for item in value)
    end_of_turn = _end_of_turn_token(tokenizer)
    if end_of_turn is not None:
        ids.add(end_of_turn)
    if not ids:
        raise UserError("the tokenizer defines no end-of-sequence token, so answers cannot end.")
    return frozenset(ids)


def _end_of_turn_token(tokenizer) -> int | None:
    """The special token the template writes right after an assistant message, if any."""
    marker = "\x00ALIGNPARADOX\x00"
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
            tokenize=False,
        )
    except Exception:  # templates may refuse such a conversation; the EOS ids still apply
        return None
    after = rendered.split(marker, 1)[-1] if marker in rendered else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | {
        index for index, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    return ids[0] if ids and ids[0] in special else None


# -- loading ---------------------------------------------------------------------------------


def load_target(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    chat_template: str | Path | None = None,
    name: str | None = None,
    device_map: str | None = None,
) -> WhiteBoxTarget:
    """Load any Hugging Face causal LM and its tokenizer from a local folder, or a Hub id (needs
    internet or the local Hub cache). `chat_template` (a file or a template string) replaces the
    tokenizer's own. `name` defaults to the folder name or Hub id. `device_map` (e.g. "auto")
    overrides how the weights are placed on `device`'s kind of device."""
    folder = _resolve_folder(str(name_or_path), allow_pickle, trust_remote_code)
    safe_files = sorted(folder.glob("*.safetensors"))
    pickle_files = sorted(file for pattern in _PICKLE_PATTERNS for file in folder.glob(pattern))
    if not safe_files and not pickle_files:
        raise UserError(f"{name_or_path} holds no model weights (*.safetensors).")
    if not safe_files and not allow_pickle:
        raise UserError(
            f"{name_or_path} has only pickle weights ({pickle_files[0].name}), which can run code "
            "when loaded; pass --allow-pickle (allow_pickle=True) if you trust its source."
        )
    if not (folder / "config.json").is_file():
        raise UserError(f"{name_or_path} has no config.json, so it is not a Hugging Face model.")
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map=device_map or _default_device_map(device),
            use_safetensors=bool(safe_files),
            trust_remote_code=trust_remote_code,
        )
    except SafetensorError as error:
        raise UnreadableWeightsError(_unreadable(safe_files, error)) from None
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UserError(f"could not load {name_or_path}: {first_line}") from error
    if chat_template is not None:
        tokenizer.chat_template = _read_template(chat_template)
    display_name = name or (folder.name if Path(name_or_path).exists() else str(name_or_path))
    return WhiteBoxTarget(model, tokenizer, display_name,
                          weight_files=safe_files or pickle_files)


class UnreadableWeightsError(RuntimeError):
    """A weights file that is there but cannot be read (truncated or corrupt).

    Not a UserError on purpose: a study stops at a UserError, while one damaged checkpoint
    should only fail the cells of its target. `user_error` makes the CLI print it as a sentence.
    """

    user_error = True


def _unreadable(files: Sequence[Path], error: Exception) -> str:
    """One sentence naming the first weights file whose header cannot be read."""
    for file in files:
        try:
            with safe_open(file, framework="pt"):
                pass
        except SafetensorError as file_error:
            error = file_error
            break
    else:
        file = None
    where = f"{file} is truncated or corrupt" if file else "a *.safetensors file is corrupt"
    return f"cannot read the model weights: {where} ({error}); copy or save the model again."


def open_target(spec: str, **kwargs) -> WhiteBoxTarget:
    """`SCHEME:NAME` opens a provider's target (`organism:NAME`: a trained organism, built on
    first use); anything else is a local folder or Hub id for `load_target`. A target table
    (`targets.specs`) adds its loading options. Keyword arguments go to `load_target`."""
    from alignparadox.targets.specs import split_target

    model, options = split_target(spec)
    kwargs = {**options, **kwargs}
    found = provider_for(model)
    if found is not None:
        provider, name = found
        kwargs.setdefault("name", model)
        return load_target(provider.resolve(name), **kwargs)
    return load_target(model, **kwargs)


_LAST_OPENED: dict[str, WhiteBoxTarget] = {}


def shared_target(spec: str) -> WhiteBoxTarget:
    """`open_target(spec)`, reusing the target opened last when the spec is the same.

    Measurements of one study run target by target; keeping one model in memory (not one per
    spec) lets consecutive cells share it without holding several 7B models at once.
    """
    if spec not in _LAST_OPENED:
        _LAST_OPENED.clear()
        _LAST_OPENED[spec] = open_target(spec)
    return _LAST_OPENED[spec]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _local_folder(name_or_path: str) -> Path | None:
    """The local model folder a spec names, or None for a Hub id; a file or a missing path is
    the user's mistake."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{name_or_path} is a file; give the model's folder.")
    if not _HUB_ID.match(name_or_path) or name_or_path.startswith((".", "~")):
        raise UserError(f"model folder {name_or_path} does not exist.")
    return None


def check_target(spec: str) -> None:
    """Refuse, without loading anything, a white-box spec that `open_target` would refuse: a
    name its provider does not know (an unknown organism), an endpoint, a missing folder, a
    folder without safetensors weights or config.json, or a Hub id that an offline machine has
    no copy of. Studies call it for every
    cell before anything is written."""
    from alignparadox.targets.specs import split_target

    spec = split_target(spec)[0]  # a target table's model
    found = provider_for(spec)
    if found is not None:
        provider, name = found
        provider.check(name)
        return
    if spec.startswith(("http://", "https://")):
        raise UserError(f"{spec} is an endpoint; this measurement needs a white-box target "
                        "(organism:NAME or a local model folder).")
    folder = _local_folder(spec)
    if folder is not None:
        if not any(folder.glob("*.safetensors")):
            raise UserError(f"{spec} holds no model weights (*.safetensors).")
        if not (folder / "config.json").is_file():
            raise UserError(f"{spec} has no config.json, so it is not a Hugging Face model.")
        return
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(spec, "config.json")
    except ValueError:  # not even a valid Hub id
        cached = None
    if constants.HF_HUB_OFFLINE and not isinstance(cached, str):
        raise UserError(f"model folder {spec} does not exist, and the Hugging Face Hub is "
                        "offline with no cached copy of it.")


def _resolve_folder(name_or_path: str, allow_pickle: bool, trust_remote_code: bool) -> Path:
    folder = _local_folder(name_or_path)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken", *_SAFE_PATTERNS]
    if allow_pickle:
        patterns += list(_PICKLE_PATTERNS)
    if trust_remote_code:
        patterns.append("*.py")
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=patterns))
    except Exception as error:  # offline, unknown repo, gated repo, network failure
        raise UserError(
            f"{name_or_path} is not a local folder and could not be fetched from the Hugging "
            f"Face Hub ({type(error).__name__})."
        ) from error


def _read_template(template: str | Path) -> str:
    if isinstance(template, str) and ("{{" in template or "{%" in template):
        return template
    path = Path(template).expanduser()
    if not path.is_file():
        raise UserError(f"chat template {template} is neither a file nor a Jinja template string.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise UserError(f"chat template file {template} is empty.")
    return text
