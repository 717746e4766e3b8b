"""The ``Tokenizer``: a HF ``tokenizers.Tokenizer`` plus the ``tokenizer_config.json`` fields
nanoseek uses; load and save HF tokenizer dirs, encode and decode, render R1 chats.

Any HF ``tokenizer.json`` loads, and what nanoseek saves opens in ``transformers``
(``AutoTokenizer``) with the same ids, chat template included. Training a new one:
``nanoseek.tokenizer_train``; the public names are gathered in ``nanoseek.tokenizer``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tokenizers import Tokenizer as BackendTokenizer

from nanoseek.chat_template import (
    ASSISTANT_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    THINK_END,
    THINK_START,
    USER_TOKEN,
    render_segments,
)

DEFAULT_MODEL_MAX_LENGTH = 131072
CONFIG_KEYS = ("bos_token", "eos_token", "pad_token", "chat_template", "model_max_length")


class ChatEncoding(NamedTuple):
    """Token ids of a rendered chat and its loss mask (1 on assistant-produced tokens)."""

    ids: list[int]
    loss_mask: list[int]


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus BOS/EOS/PAD names and a chat template.

    Build one with ``train_tokenizer`` or ``Tokenizer.from_pretrained``. ``encode`` never adds
    special tokens unless ``add_bos=True`` (the BOS is prepended here, not by the backend's
    post-processor, so any loaded ``tokenizer.json`` behaves the same).
    """

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        for field, token in (("bos_token", bos_token), ("eos_token", eos_token),
                             ("pad_token", pad_token)):
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"{field} {token!r} is not in the tokenizer's vocabulary")
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.extra_config = dict(extra_config or {})

    # ---- loading and saving -------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a HF tokenizer: a directory with ``tokenizer.json`` or the file itself.

        ``tokenizer_config.json`` (and ``chat_template.jinja``, which takes priority for the
        template, as in ``transformers``) are read when present next to it. Without a config,
        DeepSeek's BOS/EOS/PAD tokens are used when they are in the vocabulary.
        """
        path = Path(path)
        tokenizer_file = path / "tokenizer.json" if path.is_dir() else path
        if not tokenizer_file.is_file():
            where = f"directory {path} has no tokenizer.json" if path.is_dir() else f"{path}"
            raise ValueError(f"cannot load a tokenizer: {where} (expected a HF tokenizer.json)")
        try:
            backend = BackendTokenizer.from_file(str(tokenizer_file))
        except Exception as error:  # the Rust side raises plain Exceptions
            raise ValueError(f"{tokenizer_file} is not a valid tokenizer.json: {error}") from error
        config = _read_config(tokenizer_file.parent)
        config.pop("added_tokens_decoder", None)  # transformers rebuilds it from tokenizer.json
        fields = {key: config.pop(key) for key in CONFIG_KEYS if key in config}
        if "model_max_length" in fields:
            fields["model_max_length"] = int(fields["model_max_length"])
        defaults = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
        for key, token in defaults.items():  # an explicit null in the config stays None
            if key in fields:
                fields[key] = _token_content(fields[key])
            elif backend.token_to_id(token) is not None:
                fields[key] = token
        fields["chat_template"] = _chat_template(fields.get("chat_template"), tokenizer_file.parent)
        return cls(backend, extra_config=config, **fields)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

        Each file is written atomically. A ``chat_template.jinja`` already in ``directory``
        (which ``transformers`` would prefer over the config) is replaced by this template or
        removed. Returns the directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        named = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                 "pad_token": self.pad_token}
        specials = {key: value for key, value in named.items() if value is not None}
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **self.extra_config,
            **named,  # an explicit null keeps a reload from falling back to DeepSeek's tokens
            "add_bos_token": self._backend_adds_bos(),
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        _atomic_write(directory / "tokenizer.json", self.backend.to_str(pretty=True))
        _atomic_write(directory / "tokenizer_config.json", _to_json(config))
        _atomic_write(directory / "special_tokens_map.json", _to_json(specials))
        jinja_file = directory / "chat_template.jinja"
        if jinja_file.exists() and self.chat_template is not None:
            _atomic_write(jinja_file, self.chat_template)
        elif jinja_file.exists():
            jinja_file.unlink()
        return directory

    # ---- encoding -----------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings in it become their single ids."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self._require_id("bos"), *ids] if add_bos else ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
        """``encode`` for many texts at once (parallel in the Rust backend)."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        prefix = [self._require_id("bos")] if add_bos else []
        return [prefix + encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; ``decode(encode(s)) == s`` for any string ``s``."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        thinking: bool = True,
        last_turn_only: bool = False,
    ) -> ChatEncoding:
        """Render ``messages`` in the DeepSeek-R1 chat format; return ids and loss mask.

        The format and the mask are documented in ``nanoseek.chat_template``. The ids equal
        ``transformers``' ``apply_chat_template`` with this tokenizer's saved template.
        """
        for token in (USER_TOKEN, ASSISTANT_TOKEN, EOS_TOKEN):
            if not self._is_single_token(token):
                raise ValueError(f"this tokenizer has no single token {token!r}: it cannot "
                                 "render the R1 chat format")
        segments = render_segments(
            messages, bos_token=self.bos_token or "", add_generation_prompt=add_generation_prompt,
            thinking=thinking, last_turn_only=last_turn_only,
        )
        ids: list[int] = []
        loss_mask: list[int] = []
        for segment, segment_ids in zip(segments, self.encode_batch([s.text for s in segments]),
                                        strict=True):
            ids += segment_ids
            loss_mask += [int(segment.trainable)] * len(segment_ids)
        return ChatEncoding(ids, loss_mask)

    # ---- vocabulary ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding table needs this many rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token`` (a vocabulary entry, e.g. ``"Ġthe"``), or None."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Vocabulary entry of ``token_id``, or None when out of range."""
        return self.backend.id_to_token(token_id)

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sentence token, or None."""
        return self._optional_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sentence token, or None."""
        return self._optional_id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token, or None."""
        return self._optional_id(self.pad_token)

    @property
    def think_start_id(self) -> int | None:
        """Id of ``<think>`` when it is a single token, else None."""
        return self.token_to_id(THINK_START) if self._is_single_token(THINK_START) else None

    @property
    def think_end_id(self) -> int | None:
        """Id of ``</think>`` when it is a single token, else None."""
        return self.token_to_id(THINK_END) if self._is_single_token(THINK_END) else None

    @property
    def has_think_tokens(self) -> bool:
        """True when ``<think>`` and ``</think>`` are each one token."""
        return self.think_start_id is not None and self.think_end_id is not None

    def fingerprint(self) -> str:
        """SHA-256 (hex) of everything that decides ids: tokenizer.json, specials, template."""
        state = {
            "tokenizer": json.loads(self.backend.to_str()),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "chat_template": self.chat_template,
        }
        canonical = json.dumps(state, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos={self.eos_token!r}, think_tokens={self.has_think_tokens})")

    def _optional_id(self, token: str | None) -> int | None:
        return None if token is None else self.token_to_id(token)

    def _require_id(self, name: str) -> int:
        token_id = getattr(self, f"{name}_id")
        if token_id is None:
            raise ValueError(f"this tokenizer has no {name}_token (see tokenizer_config.json)")
        return token_id

    def _is_single_token(self, token: str) -> bool:
        token_id = self.token_to_id(token)
        return token_id is not None and self.encode(token) == [token_id]

    def _backend_adds_bos(self) -> bool:
        bos_id = self.bos_id
        return bos_id is not None and self.backend.encode("").ids[:1] == [bos_id]


# ---- helpers --------------------------------------------------------------------------------


def _read_config(directory: Path) -> dict[str, Any]:
    config_file = directory / "tokenizer_config.json"
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} must hold a JSON object")
    return config


def _token_content(token: Any) -> str | None:
    """A special token as HF writes it: a string, ``{"content": ...}`` dict, or null."""
    if token is None or isinstance(token, str):
        return token
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    raise ValueError(f"special token {token!r} must be a string or a dict with 'content'")


def _chat_template(template: Any, directory: Path) -> str | None:
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):  # the older named-templates form
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ValueError("chat_template in tokenizer_config.json must be a string or a list of "
                     "{name, template} with a 'default' entry")


def _to_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
