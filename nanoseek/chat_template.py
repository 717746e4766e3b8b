"""The DeepSeek-R1 chat format: special tokens, a Python renderer and the matching Jinja template.

The format (``{…}`` are message fields; nothing else, no newlines, sits between the parts)::

    {bos}{system}<｜User｜>{user}<｜Assistant｜>{answer}<｜end▁of▁sentence｜><｜User｜>{user}…

* ``{bos}`` is ``<｜begin▁of▁sentence｜>``; ``{system}`` is every system message joined by a
  blank line (``"\\n\\n"``), placed right after it whatever the message's position, as
  DeepSeek's own template does.
* An assistant message is split into ``(reasoning, answer)``: ``reasoning_content`` (the
  DeepSeek API field) when it is a string, else the text inside an inline
  ``<think>…</think>`` of ``content`` (the answer is what follows the last ``</think>``, with
  leading newlines dropped), else no reasoning. The reasoning loses leading/trailing newlines.
* Reasoning is dropped in history. Only the final assistant turn (the last message), when
  ``thinking`` is on and its reasoning is not empty, is rendered with it::

      <｜Assistant｜><think>\\n{reasoning}\\n</think>\\n\\n{answer}<｜end▁of▁sentence｜>

* The generation prompt is ``<｜Assistant｜><think>\\n`` with ``thinking`` on (R1 forces the
  response to start with a thinking block) and ``<｜Assistant｜>`` with it off.

``render_segments`` cuts the rendered text into pieces that each start or end at a special
token, so tokenizing the pieces one by one gives the same ids as tokenizing the whole text, and
each piece carries whether the assistant produced it (the loss mask for SFT). The trainable
pieces are, per assistant turn, everything after ``<｜Assistant｜>`` up to and including
``<｜end▁of▁sentence｜>``. ``CHAT_TEMPLATE`` renders exactly the same text for
``transformers``' ``apply_chat_template`` (which passes ``thinking=...`` through as a template
variable), and wraps the same pieces in ``{% generation %}`` so its
``return_assistant_tokens_mask`` agrees with ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
USER_TOKEN = "<｜User｜>"
ASSISTANT_TOKEN = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"

ROLES = ("system", "user", "assistant")

CHAT_TEMPLATE = r"""{%- set thinking = thinking if thinking is defined else true -%}
{%- set ns = namespace(system='', has_system=false) -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- if ns.has_system -%}{%- set ns.system = ns.system + '\n\n' -%}{%- endif -%}
{%- set ns.system = ns.system + (message['content'] if message['content'] is string else '') -%}
{%- set ns.has_system = true -%}
{%- elif message['role'] != 'user' and message['role'] != 'assistant' -%}
{{- raise_exception('unsupported role ' + message['role'] + ': use system, user or assistant') }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and messages[-1]['role'] == 'assistant' -%}
{{- raise_exception('add_generation_prompt needs the last message to be from the user') }}
{%- endif -%}
{{- bos_token if bos_token is defined else '' }}{{ ns.system }}
{%- for message in messages -%}
{%- set content = message['content'] if message['content'] is string else '' -%}
{%- if message['role'] == 'user' -%}
{{- '<｜User｜>' + content }}
{%- elif message['role'] == 'assistant' -%}
{%- if message['reasoning_content'] is string -%}
{%- set reasoning = message['reasoning_content'] -%}
{%- set answer = content -%}
{%- elif '</think>' in content -%}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}
{%- set answer = content.split('</think>')[-1].lstrip('\n') -%}
{%- else -%}
{%- set reasoning = '' -%}
{%- set answer = content -%}
{%- endif -%}
{%- set reasoning = reasoning.strip('\n') -%}
{{- '<｜Assistant｜>' }}
{%- generation -%}
{%- if loop.last and thinking and reasoning -%}
{{- '<think>\n' + reasoning + '\n</think>\n\n' }}
{%- endif -%}
{{- answer + '<｜end▁of▁sentence｜>' }}
{%- endgeneration -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<｜Assistant｜>' + ('<think>\n' if thinking else '') }}
{%- endif -%}
"""


class Segment(NamedTuple):
    """A piece of rendered chat text and whether the assistant produced it (loss mask 1)."""

    text: str
    trainable: bool


def split_reasoning(message: Mapping[str, Any]) -> tuple[str, str]:
    """Return an assistant message's ``(reasoning, answer)``, as the module docstring defines."""
    content = _content(message)
    reasoning_content = message.get("reasoning_content")
    if isinstance(reasoning_content, str):
        reasoning, answer = reasoning_content, content
    elif THINK_END in content:
        reasoning = content.split(THINK_END)[0].split(THINK_START)[-1]
        answer = content.split(THINK_END)[-1].lstrip("\n")
    else:
        reasoning, answer = "", content
    return reasoning.strip("\n"), answer


def render_segments(
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str = BOS_TOKEN,
    add_generation_prompt: bool = False,
    thinking: bool = True,
    last_turn_only: bool = False,
) -> list[Segment]:
    """Render ``messages`` in the R1 format as a list of ``Segment`` pieces.

    ``last_turn_only`` marks only the final assistant turn (the last message) as trainable
    instead of every assistant turn. Raises ``ValueError`` on an empty conversation, an unknown
    role, non-string content, or ``add_generation_prompt`` after an assistant message.
    """
    _validate(messages, add_generation_prompt)
    system = "\n\n".join(_content(m) for m in messages if m["role"] == "system")
    segments = [Segment(bos_token + system, False)]
    last = len(messages) - 1
    for index, message in enumerate(messages):
        if message["role"] == "user":
            segments.append(Segment(USER_TOKEN + _content(message), False))
        elif message["role"] == "assistant":
            reasoning, answer = split_reasoning(message)
            body = answer + EOS_TOKEN
            if index == last and thinking and reasoning:
                body = f"{THINK_START}\n{reasoning}\n{THINK_END}\n\n{body}"
            segments.append(Segment(ASSISTANT_TOKEN, False))
            segments.append(Segment(body, not last_turn_only or index == last))
    if add_generation_prompt:
        segments.append(Segment(generation_prompt(thinking), False))
    return segments


def render_text(
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str = BOS_TOKEN,
    add_generation_prompt: bool = False,
    thinking: bool = True,
) -> str:
    """Render ``messages`` in the R1 format as one string (what ``CHAT_TEMPLATE`` renders)."""
    segments = render_segments(messages, bos_token=bos_token,
                               add_generation_prompt=add_generation_prompt, thinking=thinking)
    return "".join(segment.text for segment in segments)


def generation_prompt(thinking: bool = True) -> str:
    """The text that opens the assistant's reply: ``<｜Assistant｜>`` (+ ``<think>\\n``)."""
    return ASSISTANT_TOKEN + (THINK_START + "\n" if thinking else "")


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise ValueError(
            f"{message['role']} message content must be a string, got {type(content).__name__}"
        )
    return content


def _validate(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> None:
    if not messages:
        raise ValueError("cannot render an empty conversation: give at least one message")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ValueError(f"message {index} must be a dict with a 'role' key, got {message!r}")
        if message["role"] not in ROLES:
            raise ValueError(
                f"message {index} has unsupported role {message['role']!r}: use one of {ROLES}"
            )
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ValueError(
            "add_generation_prompt=True needs the last message to be from the user, "
            "but it is an assistant message"
        )
