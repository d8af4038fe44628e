"""White-box teachers: what is attributed, and to which target score.

Two kinds share one interface (``Teacher``):

- ``ClassifierTeacher`` — any ``AutoModelForSequenceClassification``; the target score of an
  example is the logit of its label.
- ``CausalLMTeacher`` — any decoder LM (``AutoModelForCausalLM``) asked to classify: the text is
  put in a classification prompt listing the labels (through the tokenizer's chat template when
  it has one) and the target score is the log-probability of the label's tokens after it.

Both attribute to the input word embeddings of the text's own tokens only: special tokens and
prompt tokens are never scored. Padding is on the right, so positions and causal masks of real
tokens do not depend on the batch: one example alone and the same example in a batch give the
same numbers (up to float rounding).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distillq.errors import InvalidInputError
from workers.assets import resolve_model

Target = str | int

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

DEFAULT_PROMPT = (
    "Classify the text into exactly one of these labels: {labels}.\n"
    "Answer with the label only.\n\nText:\n{text}\n"
)
_SLOT = "\x00TEXT\x00"


@dataclass(frozen=True)
class Encoding:
    """One example, tokenised and not padded."""

    input_ids: list[int]
    offsets: list[tuple[int, int]]  # character span in the *text* per token; (0, 0) if none
    text_mask: list[bool]  # tokens of the text (attributed); False for special/prompt tokens
    label: int  # index into the teacher's labels
    answer: tuple[int, int] = (0, 0)  # causal LM: token range of the label's verbalisation
    query: int = 0  # the position whose attention row is read
    truncated: bool = False


@dataclass
class Batch:
    """Padded tensors of a list of encodings (right padding)."""

    input_ids: Tensor
    attention_mask: Tensor
    text_mask: Tensor
    label: Tensor
    answer_mask: Tensor
    query: Tensor

    def repeat(self, n: int) -> Batch:
        """The batch stacked ``n`` times (step-major), for integrated-gradient paths."""
        if n == 1:
            return self
        return Batch(*(t.repeat(n, *([1] * (t.dim() - 1))) for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.input_ids, self.attention_mask, self.text_mask, self.label,
                self.answer_mask, self.query)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Output:
    scores: Tensor  # (B,) target score per example
    attentions: tuple[Tensor, ...] | None = None  # per layer, (B, heads, L, L)


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise InvalidInputError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Attention maps need the eager implementation (sdpa returns none); restore it after."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


def _pad(rows: Sequence[Sequence[Any]], value: Any, dtype: torch.dtype) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=dtype)


class Teacher(ABC):
    """A white-box model, its tokenizer and its label set, on one device."""

    kind: str

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str],
                 device: str | torch.device = "auto", dtype: str | torch.dtype = "float32"):
        if not getattr(tokenizer, "is_fast", False):
            raise InvalidInputError("attribution needs a fast tokenizer (for offset mappings)")
        self.device = pick_device(device) if isinstance(device, str) else device
        self.dtype = pick_dtype(dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.labels = tuple(labels)
        self._label_ids = {c: i for i, c in enumerate(self.labels)}
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                          else tokenizer.eos_token_id or 0)

    def label_index(self, target: Target) -> int:
        if isinstance(target, int) and not isinstance(target, bool):
            if 0 <= target < len(self.labels):
                return target
        elif target in self._label_ids:
            return self._label_ids[target]
        raise InvalidInputError(f"target {target!r} is not one of the teacher's "
                                f"{len(self.labels)} labels (e.g. {list(self.labels[:5])})")

    @abstractmethod
    def encode(self, texts: Sequence[str], targets: Sequence[Target],
               max_length: int) -> list[Encoding]:
        """Tokenise; at most ``max_length`` tokens of each text are kept."""

    @abstractmethod
    def forward(self, batch: Batch, embeds: Tensor, attentions: bool = False) -> Output:
        """Target scores from input embeddings (and attention maps if asked)."""

    def embed(self, batch: Batch) -> Tensor:
        return self.model.get_input_embeddings()(batch.input_ids)  # type: ignore[no-any-return]

    def collate(self, encodings: Sequence[Encoding]) -> Batch:
        answer_rows = [[a <= i < b for i in range(len(e.input_ids))]
                       for e in encodings for a, b in [e.answer]]
        batch = Batch(
            input_ids=_pad([e.input_ids for e in encodings], self.pad_id, torch.long),
            attention_mask=_pad([[1] * len(e.input_ids) for e in encodings], 0, torch.long),
            text_mask=_pad([e.text_mask for e in encodings], False, torch.bool),
            label=torch.tensor([e.label for e in encodings], dtype=torch.long),
            answer_mask=_pad(answer_rows, False, torch.bool),
            query=torch.tensor([e.query for e in encodings], dtype=torch.long),
        )
        return Batch(*(t.to(self.device) for t in batch._tensors()))

    @torch.no_grad()
    def score(self, texts: Sequence[str], targets: Sequence[Target], *, max_length: int = 128,
              batch_size: int = 32) -> list[float]:
        """Target scores of whole texts, batched by length (forward passes only)."""
        if not texts:
            return []
        encodings = self.encode(texts, targets, max_length)
        out = [0.0] * len(encodings)
        for idx in length_batches([len(e.input_ids) for e in encodings], batch_size):
            batch = self.collate([encodings[i] for i in idx])
            scores = self.forward(batch, self.embed(batch)).scores.float().cpu().tolist()
            for i, s in zip(idx, scores, strict=True):
                out[i] = s
        return out


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (stable), cut into batches: padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class ClassifierTeacher(Teacher):
    """A sequence classifier; target = the logit of the label."""

    kind = "classifier"

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str] | None = None,
                 device: str | torch.device = "auto", dtype: str | torch.dtype = "float32"):
        outputs = int(model.config.num_labels)
        if labels is None:
            id2label = model.config.id2label
            labels = [str(id2label[i]) for i in range(outputs)]
        if len(labels) != outputs:
            raise InvalidInputError(f"{len(labels)} labels given for a classifier with "
                                    f"{outputs} outputs")
        super().__init__(model, tokenizer, labels, device, dtype)

    def encode(self, texts: Sequence[str], targets: Sequence[Target],
               max_length: int) -> list[Encoding]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_length,
                             return_offsets_mapping=True, return_special_tokens_mask=True,
                             return_overflowing_tokens=False)
        out = []
        for i, (text, target) in enumerate(zip(texts, targets, strict=True)):
            special = enc["special_tokens_mask"][i]
            offsets = [tuple(o) if not s else (0, 0)
                       for o, s in zip(enc["offset_mapping"][i], special, strict=True)]
            mask = [e > s for s, e in offsets]
            end = max((e for _, e in offsets), default=0)
            out.append(Encoding(
                input_ids=list(enc["input_ids"][i]), offsets=offsets, text_mask=mask,
                label=self.label_index(target), query=self._query(special),
                truncated=bool(text[end:].strip()),
            ))
        return out

    @staticmethod
    def _query(special: Sequence[int]) -> int:
        """Where the classifier reads: the leading [CLS] if any, else the last token."""
        return 0 if special and special[0] else len(special) - 1

    def forward(self, batch: Batch, embeds: Tensor, attentions: bool = False) -> Output:
        out = self.model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                         output_attentions=attentions)
        scores = out.logits.float().gather(1, batch.label[:, None]).squeeze(1)
        return Output(scores, out.attentions if attentions else None)


class CausalLMTeacher(Teacher):
    """A decoder LM asked to classify; target = log p(label tokens | prompt with the text)."""

    kind = "causal_lm"

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str],
                 device: str | torch.device = "auto", dtype: str | torch.dtype = "float32",
                 prompt: str | None = None, chat: bool | None = None):
        if not labels:
            raise InvalidInputError("a causal-LM teacher needs the label taxonomy for its prompt")
        super().__init__(model, tokenizer, labels, device, dtype)
        self.prompt = prompt or DEFAULT_PROMPT
        if "{text}" not in self.prompt:
            raise InvalidInputError("the attribution prompt must contain {text}")
        self.chat = bool(tokenizer.chat_template) if chat is None else chat
        self._prefix, self._suffix = self._frame()
        self._answers = [self._answer_ids(c) for c in self.labels]

    def _frame(self) -> tuple[str, str]:
        """The prompt text before and after the example's text."""
        body = self.prompt.replace("{labels}", ", ".join(self.labels)).replace("{text}", _SLOT)
        if self.chat:
            body = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
        else:
            body = body + "Label:"
        prefix, suffix = body.split(_SLOT)
        return prefix, suffix

    def _answer_ids(self, label: str) -> list[int]:
        ids = self.tokenizer(label if self.chat else " " + label, add_special_tokens=False)
        return list(ids["input_ids"])

    def encode(self, texts: Sequence[str], targets: Sequence[Target],
               max_length: int) -> list[Encoding]:
        labels = [self.label_index(t) for t in targets]
        return [self._encode_one(text, label, max_length)
                for text, label in zip(texts, labels, strict=True)]

    def _tokens(self, text: str) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
        start = len(self._prefix)
        enc = self.tokenizer(self._prefix + text + self._suffix, return_offsets_mapping=True,
                             add_special_tokens=not self.chat)
        offsets, mask = [], []
        for s, e in enc["offset_mapping"]:
            inside = e > start and s < start + len(text) and e > s
            mask.append(inside)
            offsets.append((max(s - start, 0), min(e - start, len(text))) if inside else (0, 0))
        return list(enc["input_ids"]), offsets, mask

    def _encode_one(self, text: str, label: int, max_length: int) -> Encoding:
        ids, offsets, mask = self._tokens(text)
        truncated = sum(mask) > max_length
        if truncated:
            cut = [o for o, m in zip(offsets, mask, strict=True) if m][max_length - 1][1]
            ids, offsets, mask = self._tokens(text[:cut])
        answer = self._answers[label]
        return Encoding(input_ids=ids + answer, offsets=offsets + [(0, 0)] * len(answer),
                        text_mask=mask + [False] * len(answer), label=label,
                        answer=(len(ids), len(ids) + len(answer)), query=len(ids) - 1,
                        truncated=truncated)

    def forward(self, batch: Batch, embeds: Tensor, attentions: bool = False) -> Output:
        base = getattr(self.model, self.model.base_model_prefix)
        out = base(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                   output_attentions=attentions)
        rows, cols = batch.answer_mask.nonzero(as_tuple=True)
        hidden = out.last_hidden_state[rows, cols - 1]  # the state that predicts each token
        logp = torch.log_softmax(self.model.get_output_embeddings()(hidden).float(), dim=-1)
        token_logp = logp.gather(1, batch.input_ids[rows, cols][:, None]).squeeze(1)
        scores = torch.zeros(len(batch), device=embeds.device).index_add(0, rows, token_logp)
        return Output(scores, out.attentions if attentions else None)


def load_teacher(model: str, kind: str = "classifier", *, labels: Sequence[str] | None = None,
                 device: str = "auto", dtype: str = "float32",
                 prompt: str | None = None) -> Teacher:
    """Load a teacher from a local folder or a ``builtin:`` asset (never from a hub)."""
    # deferred: transformers takes seconds to import, and only a loading worker needs it
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    ref = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(ref.path, **ref.load_kwargs())
    if kind == "classifier":
        net = AutoModelForSequenceClassification.from_pretrained(ref.path, **ref.load_kwargs())
        teacher: Teacher = ClassifierTeacher(net, tokenizer, None, device, dtype)
        _check_labels(teacher, labels)
        return teacher
    if kind == "causal_lm":
        net = AutoModelForCausalLM.from_pretrained(ref.path, **ref.load_kwargs())
        return CausalLMTeacher(net, tokenizer, list(labels or []), device, dtype, prompt)
    raise InvalidInputError(f"teacher kind {kind!r} is not 'classifier' or 'causal_lm'")


def _check_labels(teacher: Teacher, labels: Sequence[str] | None) -> None:
    missing = sorted(set(labels or []) - set(teacher.labels))
    if missing:
        raise InvalidInputError(
            f"the classifier teacher has no output for {len(missing)} label(s) "
            f"{missing[:5]}; its labels are {list(teacher.labels[:5])}...: fine-tune it "
            "(attribution.finetune: true) or give a classifier trained on this taxonomy")
