"""The run spec: one YAML file, validated by a typed model.

Every error names the field and the problem (``SpecError.problems``). Paths in the spec are
resolved relative to the spec file. Model references may be a local Hugging Face folder or one of
the offline assets named in ``workers.assets`` (``builtin:minilm``, ``builtin:smollm2``); dataset
references may be a file path or ``builtin:20newsgroups-train`` and friends (see
``orchestrator.datasets``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distillq.errors import SpecError

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_run_id(run_id: str) -> str:
    """Run ids name folders and Redis keys: letters, digits, ``_ . -``; no separators, no ``..``."""
    if not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ValueError(
            f"run id {run_id!r} is not allowed: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit, no path separators and no '..'"
        )
    return run_id


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Model):
    """Where the labelled data comes from and how the seed is drawn (PGKD: 1,000 = 800 + 200)."""

    train: str = Field(description="training split: a CSV/TSV/Orange .tab, Parquet or JSONL "
                       "file, a folder of Parquet/JSONL files (shards), a `datasets` "
                       "save_to_disk folder, or builtin:NAME")
    test: str | None = Field(default=None, description="test split (any format train takes), "
                             "evaluated once at the end")
    text_column: str = Field(
        default="text", description="the column holding the texts in the train and test files")
    label_column: str = Field(
        default="label", description="the column holding the labels in the train and test files")
    id_column: str | None = Field(default=None, description="optional column of unique row ids")
    labels: list[str] | None = Field(
        default=None, description="the label taxonomy; default: the labels found in train"
    )
    label_descriptions: dict[str, str] = Field(
        default_factory=dict, description="what a label means (label: one line), shown beside "
        "the label in the taxonomy of every teacher prompt, generation and labelling alike")
    seed_size: int = Field(
        default=1000, ge=2, description="training rows drawn at random (sample_seed) as the "
        "labelled seed, validation included: val_fraction of them are the validation split, "
        "the rest the seed's training rows; the training rows outside the seed are the pool")
    val_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="the share of the seed held out as the "
        "validation split (rounded, at least one row, and at least one row left to train on)")
    steer_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="share of the validation split, drawn label by label, that only steers "
        "generation (the report, the quotas, the mined examples); the rest alone picks the "
        "epoch and the cycle to keep. 0: the whole validation split does both, as in PGKD",
    )
    test_limit: int | None = Field(default=None, ge=1, description="evaluate on a subset of test")
    max_text_chars: int = Field(default=20_000, ge=16, description="longer texts are an error")
    conflicting_labels: Literal["refuse", "drop", "keep"] = Field(
        default="refuse", description="identical texts (spaces aside) under different labels "
        "in the train or test file: refuse the dataset (an error naming them), drop every "
        "such row, or keep them all; drop and keep log how many. The builtin 20 Newsgroups "
        "and Reuters training files hold a few cross-posted texts: they need drop or keep")
    sample_seed: int = Field(
        default=0, description="seed of the random draws over the data: the seed and its "
        "validation split, the test subset, the steering part, the few-shot examples of single "
        "prompts and the texts labelling selects")
    unlabelled: str | None = Field(
        default=None, description="texts without labels for the teacher to label "
        "(labelling.share): a CSV/TSV/Parquet/JSONL file, a folder of them, a `datasets` "
        "save_to_disk folder, or rest_of_train (the training rows outside the seed, as texts "
        "only); texts also in the seed, "
        "validation or test split are dropped")
    unlabelled_text_column: str | None = Field(
        default=None, description="the text column of dataset.unlabelled (default: "
        "text_column)")
    unlabelled_id_column: str | None = Field(
        default=None, description="a column of unique ids in dataset.unlabelled (default: "
        "file and row)")


class PriceSpec(_Model):
    """Money per 1,000 tokens, in any currency the user likes (reports call it 'cost')."""

    input_per_1k: float = Field(
        default=0.0, ge=0, description="price of 1,000 input (prompt) tokens")
    output_per_1k: float = Field(
        default=0.0, ge=0, description="price of 1,000 output (answer) tokens")
    cached_input_per_1k: float | None = Field(
        default=None, ge=0, description="input tokens the provider served from its prompt "
        "cache (OpenAI: half the input price); unset: priced as input_per_1k")


class SimSpec(_Model):
    """The simulated teacher: an OpenAI-compatible server answering from a pool of real data."""

    pool: Literal["rest_of_train"] = Field(
        default="rest_of_train", description="the real labelled texts the sim answers with: "
        "rest_of_train, the training rows outside the seed (neither seed training nor "
        "validation rows)")
    label_noise: float = Field(
        default=0.0, ge=0.0, le=1.0, description="the share of labels the sim gets wrong, in "
        "the examples it writes and the texts it labels")
    noise_kind: Literal["uniform", "confusion"] = Field(
        default="uniform", description="a wrong label is any other (uniform) or the other "
        "label whose texts are closest to the text (confusion)")
    latency_ms: float = Field(
        default=0.0, ge=0.0, description="milliseconds the sim waits before each answer, to "
        "stand in for a real server's latency")
    fault_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="the chance that an HTTP attempt gets a "
        "transport fault (a 5xx; a hang, then 504; half an answer) and, drawn apart, that an "
        "answer carries a content fault (one label outside the taxonomy or one prompt-injection "
        "text); for testing retries and validation")
    rpm_limit: int | None = Field(default=None, ge=1, description="the sim answers 429 above this")
    prefix_cache_tokens: int = Field(
        default=1024, ge=0, description="model a provider's automatic prompt cache: a prompt "
        "of at least this many tokens is cached, and a later one that starts with the same "
        "tokens reports them as cached, in steps of 128 (OpenAI's rule); 0: no cache")
    seed: int = Field(
        default=0, description="seed of the sim's draws: an answer's examples, label noise "
        "and content faults depend only on this seed, the prompt and the request's own seed")


class TeacherSpec(_Model):
    kind: Literal["openai", "sim"] = Field(
        default="sim", description="sim: the simulated teacher, which `orchestrator run` "
        "starts itself (see the `teacher.sim` section); openai: any OpenAI-compatible "
        "chat-completions server at base_url")
    base_url: str | None = Field(
        default=None, description="the server's URL; /v1 is appended unless it ends with it. "
        "Required for kind openai; for kind sim, the URL of the started sim overrides it")
    model: str = Field(
        default="sim-teacher", description="the model name sent in every request, also part "
        "of the rate-limit namespace (the sim accepts any name and answers as distillq-sim)")
    api_key_env: str | None = Field(default=None, description="env variable holding the API key")
    api_key_file: str | None = Field(default=None, description="file holding the API key")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra HTTP headers sent with every request; they "
        "are stored in the run manifest, so keep secrets in api_key_env / api_key_file")
    rpm: int = Field(default=600, ge=1, description="requests/minute, shared by all workers")
    tpm: int = Field(default=2_000_000, ge=1, description="tokens/minute, shared by all workers")
    concurrency: int = Field(default=16, ge=1, description="requests in flight per process")
    timeout_s: float = Field(
        default=60.0, gt=0, description="seconds one HTTP attempt may take; a slower one "
        "counts as a timeout and is retried (pre-flight waits at most 30 s)")
    max_attempts: int = Field(
        default=6, ge=1, description="HTTP attempts per request, the first included; "
        "429, 408, 5xx, connection errors and timeouts are retried with exponential backoff")
    max_elapsed_s: float = Field(
        default=300.0, gt=0, description="seconds from a request's first attempt: no retry "
        "is made whose wait would end at or after this (the request fails), and no "
        "Retry-After is waited longer")
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="sampling temperature sent with every request")
    max_output_tokens: int = Field(
        default=2048, ge=16, description="sent as max_tokens: the longest answer, in tokens; "
        "an answer cut there is asked again as two requests for half the items each")
    global_rate_limit: bool = Field(
        default=True, description="pace rpm/tpm in Redis across all workers (false: only "
        "per-process concurrency, retries and Retry-After; for endpoints without limits)")
    json_mode: bool = Field(
        default=False, description='send response_format {"type": "json_object"} (OpenAI, '
        "vLLM, llama.cpp and Ollama support it)")
    send_seed: bool = Field(
        default=True, description="send each request a seed of its own (OpenAI's `seed`, "
        "also read by vLLM, llama.cpp and Ollama), the same on its retries: answers as "
        "reproducible as the endpoint allows, and no two requests alike (false: for an "
        "endpoint that refuses the field)")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="extra JSON fields merged into every request body, "
        "for what a server reads beyond OpenAI's API (vLLM's `guided_json`, `top_k`, "
        "`repetition_penalty`; llama.cpp's `grammar`); not the fields distillq sets itself")
    preflight: bool = Field(
        default=True, description="send one minimal request before the run writes or trains "
        "anything (`run`, `submit`, `resume`): a wrong URL, model or key ends the command "
        "within seconds with the server's message, exit code 5")
    price: PriceSpec = Field(
        default_factory=PriceSpec, description="token prices, for the cost in reports and "
        "budget.max_cost: see the `teacher.price` section")
    sim: SimSpec = Field(
        default_factory=SimSpec, description="the simulated teacher (kind sim): see the "
        "`teacher.sim` section")

    @field_validator("extra_body")
    @classmethod
    def _extra_body_adds_only(cls, v: dict[str, Any]) -> dict[str, Any]:
        own = {"model": "teacher.model", "messages": None,
               "max_tokens": "teacher.max_output_tokens", "temperature": "teacher.temperature",
               "seed": "teacher.send_seed", "stream": None}
        for key in v:
            if key in own:
                where = f" (set it with {own[key]})" if own[key] else ""
                raise ValueError(f"{key!r} is set by distillq itself{where}")
        return v

    @model_validator(mode="after")
    def _one_response_format(self) -> TeacherSpec:
        if self.json_mode and "response_format" in self.extra_body:
            raise ValueError("teacher.json_mode and extra_body.response_format both set the "
                             "response format: keep one")
        return self

    @model_validator(mode="after")
    def _openai_needs_url(self) -> TeacherSpec:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("teacher.base_url is required when teacher.kind is 'openai'")
        return self


class GenerationSpec(_Model):
    """What the teacher is asked for each cycle (PGKD section 3)."""

    mode: Literal["sharded", "single", "unguided"] = Field(
        default="sharded",
        description="sharded: one job per class or confused pair; single: the paper's one "
        "prompt with the whole report; unguided: uniform quotas, no report, no hard negatives",
    )
    examples_per_cycle: int = Field(
        default=200, ge=1, description="new examples asked of the teacher each cycle, shared "
        "out over classes (and confused pairs) by the mode's quotas; labelling.share of them "
        "go to labelling instead")
    examples_per_request: int = Field(
        default=10, ge=1, le=100, description="most examples asked in one request: a quota "
        "is cut into jobs of at most this many, one request each")
    n_correct: int = Field(
        default=16, ge=0, description="a guided prompt shows up to this many examples the "
        "student classifies correctly, drawn at random from its training rows and the "
        "validation rows that steer (per class in sharded mode)")
    n_misclassified: int = Field(
        default=16, ge=0, description="a guided prompt shows up to this many examples the "
        "student gets wrong, drawn at random, each with its predicted label and confidence")
    n_hard_negatives: int = Field(
        default=16, ge=0, description="a guided prompt shows up to this many of the student's "
        "most confident errors, most confident first, with prediction and confidence (they "
        "may also be among the misclassified)")
    n_fewshot: int = Field(
        default=4, ge=0, description="labelled examples from the seed's training rows shown in "
        "every prompt (unguided too); each part of a quota and each cycle shows the next ones")
    use_report: bool = Field(
        default=True, description="show the student's validation report (accuracy, F1, "
        "per-class precision / recall / F1, frequent confusions) in guided prompts")
    use_hard_negatives: bool = Field(
        default=True, description="show hard negatives in guided prompts (false: none, "
        "whatever n_hard_negatives)")
    shared_examples: bool = Field(
        default=False, description="show every request of a cycle the same correct / "
        "misclassified / hard-negative examples (of any class), early in the prompt, so a "
        "provider's prompt cache serves them at its cached price; off: each request shows "
        "its targets' own examples, after the shared part (docs/teachers.md, \"Prompt "
        "caching\")")
    class_floor: int = Field(default=1, ge=0, description="examples every class gets per cycle")
    report_token_budget: int = Field(
        default=1500, ge=100, description="about how many tokens (4 characters each) the "
        "report may take in a prompt: class lines beyond it are left out, and the confusions "
        "are shown only if they fit")
    prompt_example_chars: int = Field(
        default=400, ge=20, description="each example shown in a prompt is cut to this length")
    min_chars: int = Field(
        default=3, ge=1, description="a generated text shorter than this (characters) is "
        "rejected as too_short")
    max_chars: int = Field(
        default=2000, ge=10, description="the longest generated text (characters): the prompt "
        "says so, and a longer one is rejected as too_long")
    tolerated_failure_fraction: float = Field(
        default=0.1, ge=0.0, le=1.0, description="the share of a job's requests that may fail "
        "without failing the job (the rest are kept), and of a cycle's generation jobs that "
        "may fail for good before the run fails (jobs the budget refused do not count)")


class LabellingSpec(_Model):
    """Active labelling: the teacher labels the unlabelled texts the student is least sure of
    (docs/labelling.md)."""

    share: float = Field(
        default=0.0, ge=0.0, le=1.0, description="the share of each cycle's "
        "generation.examples_per_cycle spent on labelling texts of dataset.unlabelled (0: "
        "none; 1: labelling only; between: mixed, the rest PGKD generation)")
    strategy: Literal["random", "margin", "entropy", "diverse"] = Field(
        default="diverse", description="random; margin or entropy: the most uncertain first; "
        "diverse: the most uncertain, clustered, one per cluster")
    balance: bool = Field(
        default=True, description="spread the texts over the student's predicted classes, "
        "weak classes getting more (as generation quotas do)")
    texts_per_request: int = Field(
        default=20, ge=1, le=200, description="selected texts per labelling job, sent as one "
        "request (self_consistency times); an answer cut short is asked again in halves")
    self_consistency: int = Field(
        default=1, ge=1, le=9, description="answers asked per text; the majority label is "
        "kept and the agreement recorded")
    candidates_factor: int = Field(
        default=10, ge=1, le=50, description="diverse: this many times the texts to label "
        "are clustered, the most uncertain")
    shard_rows: int = Field(default=20_000, ge=100,
                            description="unlabelled texts per shard (one scoring job each)")
    text_chars: int = Field(default=2000, ge=20,
                            description="each text is cut to this length in a request")


class AttributionSpec(_Model):
    """Teacher rationales (Ballout et al.): see docs/attribution.md."""

    enabled: bool = Field(
        default=False, description="store a rationale (the words that drive a white-box "
        "teacher's decision) for every training example, the seed's included; needed by "
        "student.rationales")
    model: str = Field(
        default="builtin:minilm", description="the white-box teacher: a local Hugging Face "
        "folder, builtin:minilm or builtin:smollm2 (with finetune, the model fine-tuned)")
    kind: Literal["classifier", "causal_lm"] = Field(
        default="classifier", description="classifier: a sequence classifier, scored on the "
        "label's logit; causal_lm: a decoder LM asked through attribution.prompt, scored on "
        "the label's log-probability")
    finetune: bool = Field(default=True, description="fine-tune a classifier teacher on the seed")
    finetune_epochs: int = Field(
        default=30, ge=1, description="at most; early stop on val loss (a 77-way MiniLM "
        "teacher on 800 seed texts was still improving at epoch 30)",
    )
    finetune_lr: float = Field(
        default=1e-4, gt=0, description="learning rate of the teacher's fine-tune (AdamW)")
    method: Literal["saliency", "input_x_gradient", "integrated_gradients", "attention"] = Field(
        default="saliency",
        description="saliency, attention and integrated_gradients pick telling words on a "
        "fine-tuned teacher; input_x_gradient may not (docs/attribution.md)",
    )
    ig_steps: int = Field(
        default=16, ge=2, description="integrated_gradients: integration steps per text; more "
        "are slower and closer to the exact attribution")
    internal_batch_size: int = Field(
        default=256, ge=1, description="rows per forward pass for integrated-gradient steps"
    )
    attention: Literal["last_layer", "rollout"] = Field(
        default="last_layer", description="which attention map the attention method reads"
    )
    prompt: str | None = Field(
        default=None,
        description="causal_lm: classification prompt with {labels} and {text}; "
        "default: a built-in one",
    )
    top_k: int = Field(
        default=5, ge=1, description="most words in a rationale: the best-scoring words with "
        "a positive score")
    mass_fraction: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="keep the fewest words holding this share of the score mass (≤ top_k)",
    )
    drop_stopwords: bool = Field(
        default=True, description="leave function words out of rationales (negations and "
        "particles such as not, up, out are kept)")
    batch_size: int = Field(
        default=32, ge=1, description="texts per attribution pass, and the batch size of the "
        "teacher's fine-tune")
    max_length: int = Field(default=128, ge=8, description="longer texts are truncated")
    device: str = Field(default="auto", description="auto: cuda if available, else cpu")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="the teacher's weights' precision (half precision "
        "on GPU, in practice); scores are float32 either way")

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, v: str | None) -> str | None:
        if v is not None and "{text}" not in v:
            raise ValueError("the prompt must contain {text}")
        return v


class StudentSpec(_Model):
    """The student and how it is trained (paper: BERT-base, lr 2e-5, batch 64, patience 5)."""

    model: str = Field(
        default="builtin:minilm", description="the student's base model: a local Hugging Face "
        "folder or builtin:minilm, given a new classification head for the taxonomy")
    num_layers: int | None = Field(default=None, ge=1, description="keep only the first N layers")
    max_length: int = Field(
        default=64, ge=8, description="tokens of a text the student reads, in training and "
        "prediction; the rest is cut off")
    lr: float = Field(default=2e-5, gt=0, description="AdamW learning rate")
    batch_size: int = Field(default=64, ge=1, description="training examples per step")
    epochs: int = Field(default=30, ge=1, description="most epochs per cycle")
    patience: int = Field(
        default=5, ge=1, description="stop after this many epochs without a lower validation loss"
    )
    weight_decay: float = Field(default=0.01, ge=0.0, description="AdamW weight decay")
    warm_start: bool = Field(
        default=False, description="start each cycle from the previous cycle's student"
    )
    rationales: bool = Field(default=False, description="learn from teacher rationales")
    rationale_weight: float = Field(
        default=0.5, ge=0.0, description="weight of the rationale token-tagging loss"
    )
    seed: int = Field(
        default=0, description="seed of training (head initialisation, shuffling, dropout) "
        "and of the examples mined for the next cycle's prompts")
    device: str = Field(
        default="auto", description="auto: CUDA, then MPS, then CPU; or a torch device name")
    cache_dir: str | None = Field(
        default=None,
        description="a folder shared by runs: a student trained from the base model with the "
        "same settings, data and seed as one already there is copied, not trained again",
    )


class LoopSpec(_Model):
    max_cycles: int = Field(default=10, ge=0, description="generation cycles after the seed")
    patience: int = Field(
        default=5, ge=1, description="stop after this many cycles in a row without a gain "
        "of more than min_delta over the best cycle")
    metric: Literal["macro_f1", "accuracy", "weighted_f1"] = Field(
        default="macro_f1", description="the validation metric that decides whether a cycle "
        "gained and which cycle's student is kept")
    min_delta: float = Field(default=0.0, ge=0.0,
                             description="a cycle improves only if it gains more than this")
    generate_deadline_s: float = Field(
        default=600.0, gt=0, description="a job without a result is re-sent after this, once "
        "its worker has not marked it for as long either (a generate job is marked every "
        "quarter of it while it runs or waits for a request slot)")
    attribute_deadline_s: float = Field(
        default=3600.0, gt=0, description="as generate_deadline_s, for attribute jobs and "
        "the attribution teacher's fine-tune (marked once, when a worker starts them)")
    train_deadline_s: float = Field(
        default=6 * 3600.0, gt=0, description="as generate_deadline_s, for train and test "
        "jobs and labelling's score and select jobs (marked once, when a worker starts them)")
    queue_deadline_s: float = Field(
        default=6 * 3600.0, gt=0,
        description="a job no worker has started yet (still queued) is re-sent only after this; "
                    "such re-sends do not count towards max_sends")
    max_sends: int = Field(default=5, ge=1,
                           description="a job started this often without a result has failed")


class BudgetSpec(_Model):
    max_tokens: int | None = Field(
        default=None, ge=1, description="teacher tokens (input and output) the run may spend; "
        "once spent, no new teacher job starts and the loop stops after the cycle, keeping "
        "the best student. Jobs already running finish, so a run can go a little over")
    max_cost: float | None = Field(
        default=None, gt=0, description="the same cap on cost, priced by teacher.price")


class RunSpec(_Model):
    """A whole distillation run."""

    name: str = Field(
        default="run", description="the start of a generated run id "
        "(NAME-YYYYmmdd-HHMMSS-xxxx, UTC): characters other than letters, digits, - and _ "
        "become -, and only the first 24 are kept")
    run_id: str | None = Field(
        default=None, description="the run's id (1-64 letters, digits, _ . -); a run of that "
        "id already in storage is refused. Unset: generated from name")
    storage: str = Field(default="runs", description="local folder or pyarrow.fs URI (s3://...)")
    dataset: DatasetSpec = Field(
        description="the labelled data and how the seed is drawn: see the `dataset` section")
    teacher: TeacherSpec = Field(
        default_factory=TeacherSpec, description="the LLM teacher's endpoint, limits and "
        "retries: see the `teacher` section")
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec, description="what the teacher is asked for each cycle: "
        "see the `generation` section")
    labelling: LabellingSpec = Field(
        default_factory=LabellingSpec, description="the teacher labelling unlabelled texts: "
        "see the `labelling` section")
    attribution: AttributionSpec = Field(
        default_factory=AttributionSpec, description="teacher rationales: see the "
        "`attribution` section")
    student: StudentSpec = Field(
        default_factory=StudentSpec, description="the student and its training: see the "
        "`student` section")
    loop: LoopSpec = Field(
        default_factory=LoopSpec, description="when the cycles stop and when jobs are re-sent: "
        "see the `loop` section")
    budget: BudgetSpec = Field(
        default_factory=BudgetSpec, description="caps on the teacher's tokens and cost: see "
        "the `budget` section")

    @field_validator("run_id")
    @classmethod
    def _run_id_ok(cls, v: str | None) -> str | None:
        return None if v is None else validate_run_id(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunSpec:
        if self.student.rationales and not self.attribution.enabled:
            raise ValueError("student.rationales needs attribution.enabled: true")
        if self.labelling.share > 0 and not self.dataset.unlabelled:
            raise ValueError("labelling.share > 0 needs dataset.unlabelled: the texts to label")
        if 0 < self.labelling.share * self.generation.examples_per_cycle < 0.5:
            raise ValueError(
                f"labelling.share {self.labelling.share} of generation.examples_per_cycle "
                f"{self.generation.examples_per_cycle} labels no text a cycle")
        return self


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative file paths in the spec relative to the spec file's folder."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and "://" not in value and not value.startswith(
            "builtin:"
        ):
            p = Path(value).expanduser()
            return str(p if p.is_absolute() else (base / p).resolve())
        return value

    ds = data.get("dataset")
    if isinstance(ds, dict):
        for key in ("train", "test", "unlabelled"):
            if key in ds and ds[key] != "rest_of_train":  # unlabelled: a name, not a file
                ds[key] = fix(ds[key])
    for section, key in (("student", "model"), ("attribution", "model"), ("teacher", "api_key_file")):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            v = sec[key]
            if (base / v).exists() or v.startswith(("./", "../", "~")) or v.startswith("/"):
                sec[key] = fix(v)
    if isinstance(data.get("storage"), str):
        data["storage"] = fix(data["storage"])
    return data


def parse_spec(data: Any, source: str = "<spec>", base: Path | None = None) -> RunSpec:
    """Validate a decoded spec; raise SpecError naming every bad field."""
    if not isinstance(data, dict):
        raise SpecError(source, [("(top level)", "the spec must be a mapping of fields")])
    if base is not None:
        data = _resolve_paths(dict(data), base)
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        problems = [(_field_name(e["loc"]), e["msg"]) for e in exc.errors()]
        raise SpecError(source, problems) from None


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a YAML run spec."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SpecError(str(p), [("(file)", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(p), [("(file)", f"not UTF-8 text (byte {exc.start})")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(str(p), [("(file)", f"not valid YAML: {exc}")]) from None
    return parse_spec(data, str(p), p.parent.resolve())


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    """The JSON form stored in the run manifest."""
    return spec.model_dump(mode="json")
