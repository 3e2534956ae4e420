"""Diagnostic Semantic Token (DST) encoder: the raw-text and DST streams from a frozen understanding model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class DSTTokens:
    """Tokenized prompts for both MLLM-derived streams.

    Attributes:
        text_input_ids: `[batch, max_text_length]` prompt token ids, padded to `max_text_length`.
        text_attention_mask: `[batch, max_text_length]` 1 for a prompt token, 0 for padding.
        prefix_input_ids: `[batch, longest]` the templated prompt (chat template, system prompt, trigger token) that
            precedes the learnable queries, right-padded with 0.
        prefix_lengths: `[batch]` the real length of each prefix.
    """

    text_input_ids: torch.Tensor
    text_attention_mask: torch.Tensor
    prefix_input_ids: torch.Tensor
    prefix_lengths: torch.Tensor


class DSTEncoder(ModelMixin, ConfigMixin):
    """Learnable queries read out by a frozen understanding model (MLLM), plus the raw-text stream.

    The raw-text stream is the prompt's token embeddings from the MLLM's own input-embedding table. The DST stream is
    obtained by wrapping the prompt in `prompt_template` (inside the chat template with `system_prompt` when
    `use_chat_template`), appending `trigger_token` and then the `num_queries` learnable query vectors as input
    embeddings; one forward pass of the MLLM gives the last-layer hidden states at the query positions. Both streams
    then go through the down-projection (identity when `projection="identity"`) to `cond_dim`.

    Works with decoder-only chat LLMs (Qwen2, Qwen2.5-VL) and encoder-only models (BERT family): the queries are
    placed right after each prompt with right padding, so no model-specific position handling is needed.

    Args:
        hidden_size: hidden size of the MLLM (width of its input embeddings and last hidden states).
        num_queries: number of learnable queries (DSTs).
        cond_dim: width of the condition tokens; `None` means `hidden_size`.
        projection: `"identity"` (requires `cond_dim == hidden_size`) or `"linear"`.
        max_text_length: tokens kept of the prompt (raw-text stream length; the DST prompt is truncated alike).
        prompt_template: how the prompt is phrased for the DST stream; must contain `{prompt}`.
        system_prompt: system message of the chat template (ignored without a chat template).
        trigger_token: a single token appended before the queries, or `None`.
        use_chat_template: wrap the DST prompt with the tokenizer's chat template (decoder-only chat models).
        query_init_std: standard deviation of the queries' random initialisation.
    """

    @register_to_config
    def __init__(
        self,
        hidden_size: int,
        num_queries: int = 64,
        cond_dim: int | None = None,
        projection: str = "identity",
        max_text_length: int = 128,
        prompt_template: str = "Analysis of my description: {prompt}",
        system_prompt: str = "You are a helpful pathology expert.",
        trigger_token: str | None = None,
        use_chat_template: bool = True,
        query_init_std: float = 0.02,
    ):
        super().__init__()
        cond_dim = cond_dim or hidden_size
        if projection == "identity":
            if cond_dim != hidden_size:
                raise ValueError(f"`projection='identity'` needs cond_dim == hidden_size; got {cond_dim} != {hidden_size}.")
            self.down_projection = nn.Identity()
        elif projection == "linear":
            self.down_projection = nn.Linear(hidden_size, cond_dim)
        else:
            raise ValueError(f"`projection` must be 'identity' or 'linear'; got {projection!r}.")
        if "{prompt}" not in prompt_template:
            raise ValueError(f"`prompt_template` must contain '{{prompt}}'; got {prompt_template!r}.")
        if num_queries < 1 or max_text_length < 1:
            raise ValueError("`num_queries` and `max_text_length` must be at least 1.")
        self.queries = nn.Parameter(torch.randn(1, num_queries, hidden_size) * query_init_std)

    @property
    def cond_dim(self) -> int:
        """Width of the tokens this encoder produces."""
        return self.config.cond_dim or self.config.hidden_size

    def tokenize(self, tokenizer, prompts: Sequence[str], text_prompts: Optional[Sequence[str]] = None) -> DSTTokens:
        """Tokenizes `prompts` for both streams (the raw-text stream may use other `text_prompts`, e.g. a prompt
        with its attribute bundle appended) and builds the templated DST prefixes."""
        cfg = self.config
        text = tokenizer(
            list(text_prompts or prompts), padding="max_length", max_length=cfg.max_text_length, truncation=True,
            return_tensors="pt",
        )
        dst_text = text if text_prompts is None else tokenizer(
            list(prompts), padding="max_length", max_length=cfg.max_text_length, truncation=True, return_tensors="pt"
        )
        full_lengths = [len(ids) for ids in tokenizer(list(prompts), truncation=False).input_ids]
        kept = []
        for prompt, n_tokens, ids, mask in zip(prompts, full_lengths, dst_text.input_ids, dst_text.attention_mask):
            if n_tokens > cfg.max_text_length:
                shortened = tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
                logger.warning(
                    "The prompt has %d tokens; only the first %d (max_text_length) are used: %r",
                    n_tokens, cfg.max_text_length, shortened,
                )
                prompt = shortened
            kept.append(prompt)

        trigger_id = self._trigger_token_id(tokenizer)
        prefixes = []
        for prompt in kept:
            phrased = cfg.prompt_template.format(prompt=prompt)
            if cfg.use_chat_template:
                if getattr(tokenizer, "chat_template", None) is None:
                    raise ValueError(
                        "DSTEncoder has use_chat_template=True but the tokenizer has no chat_template; set "
                        "`use_chat_template=False` for encoder-only or base models."
                    )
                messages = [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": phrased}]
                phrased = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(phrased, add_special_tokens=not cfg.use_chat_template).input_ids
            prefixes.append(list(ids) + ([trigger_id] if trigger_id is not None else []))

        lengths = torch.tensor([len(p) for p in prefixes], dtype=torch.long)
        prefix_ids = torch.zeros(len(prefixes), int(lengths.max()), dtype=torch.long)
        for i, p in enumerate(prefixes):
            prefix_ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        return DSTTokens(text.input_ids, text.attention_mask, prefix_ids, lengths)

    def _trigger_token_id(self, tokenizer) -> int | None:
        token = self.config.trigger_token
        if token is None:
            return None
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise ValueError(
                f"The DST trigger token {token!r} is not a single token of the tokenizer; add it to the tokenizer "
                "(`tokenizer.add_special_tokens`) or set `trigger_token=None`."
            )
        return token_id

    @staticmethod
    def embed_text(mllm: nn.Module, tokens: DSTTokens) -> torch.Tensor:
        """The raw-text stream before the down-projection: a frozen embedding lookup (cacheable for training)."""
        embed_table = mllm.get_input_embeddings()
        return embed_table(tokens.text_input_ids.to(embed_table.weight.device))

    def forward(
        self,
        mllm: nn.Module,
        tokens: DSTTokens,
        streams: Sequence[str] = ("text", "dst"),
        text_embeds: torch.Tensor | None = None,
    ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Builds the requested MLLM-derived streams.

        Args:
            mllm: the frozen understanding model (a transformers model accepting `inputs_embeds`).
            tokens: the output of `tokenize`.
            streams: any of `"text"` and `"dst"`; the MLLM runs (once) only when `"dst"` is asked for.
            text_embeds: precomputed `embed_text(mllm, tokens)` (e.g. from a training cache).

        Returns:
            `{stream: (embeds [batch, tokens, cond_dim], mask [batch, tokens])}`.
        """
        embed_table = mllm.get_input_embeddings()
        device = embed_table.weight.device
        out: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        if "text" in streams:
            text_embeds = self.embed_text(mllm, tokens) if text_embeds is None else text_embeds.to(device)
            out["text"] = (self._project(text_embeds), tokens.text_attention_mask.to(device))
        if "dst" in streams:
            out["dst"] = self._read_queries(mllm, embed_table, tokens)
        return out

    def _read_queries(self, mllm: nn.Module, embed_table: nn.Module, tokens: DSTTokens) -> Tuple[torch.Tensor, torch.Tensor]:
        device, num_queries = embed_table.weight.device, self.config.num_queries
        batch, hidden = tokens.prefix_input_ids.shape[0], self.config.hidden_size
        prefix_embeds = embed_table(tokens.prefix_input_ids.to(device))
        lengths = tokens.prefix_lengths.to(device)
        inputs = torch.cat([prefix_embeds, prefix_embeds.new_zeros(batch, num_queries, hidden)], dim=1)
        query_positions = lengths[:, None] + torch.arange(num_queries, device=device)
        index = query_positions[..., None].expand(-1, -1, hidden)
        queries = self.queries.to(device=device, dtype=inputs.dtype).expand(batch, -1, -1)
        inputs = inputs.scatter(1, index, queries)
        attention_mask = (torch.arange(inputs.shape[1], device=device)[None] < (lengths + num_queries)[:, None]).long()
        hidden_states = mllm.base_model(inputs_embeds=inputs, attention_mask=attention_mask, return_dict=True)
        dst = hidden_states.last_hidden_state.gather(1, index)
        return self._project(dst), torch.ones(batch, num_queries, dtype=torch.long, device=device)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_projection(x.to(self.queries.dtype))
