"""A byte tokenizer with nothing to download: any string in any language is
its UTF-8 bytes (ids 0-255) between BOS and EOS, padded with PAD to a fixed
length. A prompt longer than that is cut at a character boundary, with a
one-line warning."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

BOS, EOS, PAD = 256, 257, 258
VOCAB_SIZE = 259
MAX_LEN = 48   # tokens, BOS and EOS included: 46 bytes of text


class PromptTruncated(UserWarning):
  """A prompt did not fit the token budget and was cut."""


def _fit(data: bytes, room: int) -> bytes:
  """The longest prefix of UTF-8 `data` of at most `room` bytes that ends on
  a character boundary."""
  if len(data) <= room:
    return data
  cut = room
  while cut > 0 and (data[cut] & 0xC0) == 0x80:  # a continuation byte
    cut -= 1
  return data[:cut]


def tokenize(prompt: str, max_len: int = MAX_LEN, warn: bool = True) -> np.ndarray:
  """int32 [max_len]: BOS, the UTF-8 bytes, EOS, then PAD; a cut prompt
  warns (`warn`; training data cut to fit does not)."""
  if not isinstance(prompt, str):
    raise TypeError(f'a prompt is a str, got {type(prompt).__name__}')
  data = prompt.encode('utf-8')
  kept = _fit(data, max_len - 2)
  if len(kept) < len(data) and warn:
    warnings.warn(
        f'prompt {prompt[:30]!r}... is {len(data)} UTF-8 bytes; the model reads '
        f'{max_len - 2}, so it was cut to {kept.decode("utf-8")!r}',
        PromptTruncated, stacklevel=2)
  ids = [BOS, *kept, EOS] + [PAD] * (max_len - 2 - len(kept))
  return np.asarray(ids, np.int32)


def tokenize_all(prompts: Sequence[str], max_len: int = MAX_LEN,
                 warn: bool = True) -> np.ndarray:
  """int32 [N, max_len]."""
  return np.stack([tokenize(p, max_len, warn) for p in prompts]).astype(np.int32)


def detokenize(tokens: Sequence[int]) -> str:
  """The text of one token row (what lies between BOS and the first EOS)."""
  out = bytearray()
  for t in np.asarray(tokens).tolist():
    if t == EOS:
      break
    if t < 256:
      out.append(t)
  return out.decode('utf-8')


def attention_mask(tokens_BL):
  """True where a token is read: BOS up to and including the first EOS.
  What follows EOS is never read, whatever it holds (the padding)."""
  import jax.numpy as jnp
  after_eos = jnp.cumsum(tokens_BL == EOS, axis=-1) - (tokens_BL == EOS)
  return after_eos == 0
