"""CLIP's byte-level BPE tokenizer (Radford et al., 2021), as Stable
Diffusion's tokenizer/ folder holds it, run by the `tokenizers` library.

It gives the ids transformers 5's CLIPTokenizer gives (its recipe, copied):
NFC, runs of whitespace to one space, lower case; CLIP's split regex; bytes
to printable characters; BPE with '</w>' ending each word; BOS ... EOS;
truncation to `max_length` keeping EOS last; padding with the folder's pad
token (SD 1.x pads with <|endoftext|>, SD 2.x with "!", id 0). The special
tokens are matched in the raw text first, as transformers does, so with
pad "!" every "!" of a prompt is a token of its own.

A folder holds either vocab.json + merges.txt (SD 1.x) or tokenizer.json
(what transformers 5 saves), and tokenizer_config.json or
special_tokens_map.json naming the special tokens and model_max_length.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

from ddpm_jax import files
from ddpm_jax.errors import UserError, describe

MAX_LENGTH = 77
# transformers 5's CLIPTokenizer pattern (the special tokens, then CLIP's).
SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
         r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
DEFAULTS = dict(bos_token='<|startoftext|>', eos_token='<|endoftext|>',
                unk_token='<|endoftext|>', pad_token='<|endoftext|>')


def _read_text(path: str) -> str:
  try:
    return files.read_bytes(path).decode('utf-8')
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f'cannot read {path}: {describe(e)}') from e


def _read_json(path: str) -> Any:
  try:
    return json.loads(_read_text(path))
  except json.JSONDecodeError as e:
    raise UserError(f'{path} is not valid JSON: {describe(e)}') from e


def _token(value: Any, path: str) -> str:
  """A special token as a config names it: a string, or (older configs) an
  AddedToken dict with 'content'."""
  if isinstance(value, dict):
    value = value.get('content')
  if not isinstance(value, str) or not value:
    raise UserError(f'{path} names a special token that is not a string: '
                    f'{value!r}')
  return value


Merges = list[tuple[str, str]]


def _vocab_merges_from_json(path: str) -> tuple[dict[str, int], Merges]:
  data = _read_json(path)
  model = data.get('model') if isinstance(data, dict) else None
  if not isinstance(model, dict) or model.get('type', 'BPE') != 'BPE':
    raise UserError(f'{path} does not hold a BPE model')
  vocab, merges = model.get('vocab'), model.get('merges')
  if not isinstance(vocab, dict) or not isinstance(merges, list):
    raise UserError(f'{path} has no BPE vocab and merges')
  pairs = []
  for m in merges:
    pair = tuple(m.split(' ')) if isinstance(m, str) else tuple(m)
    if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
      raise UserError(f'{path} has a malformed merge: {m!r}')
    pairs.append(pair)
  return vocab, pairs


def _vocab_merges_from_files(vocab_path: str, merges_path: str
                             ) -> tuple[dict[str, int], Merges]:
  vocab = _read_json(vocab_path)
  if not isinstance(vocab, dict) or not all(
      isinstance(v, int) for v in vocab.values()):
    raise UserError(f'{vocab_path} is not a JSON object of token ids')
  pairs = []
  for n, line in enumerate(_read_text(merges_path).splitlines(), 1):
    if line.startswith('#version') or not line:
      continue
    pair = tuple(line.split(' '))
    if len(pair) != 2:
      raise UserError(f'{merges_path} line {n} is not a merge: {line!r}')
    pairs.append(pair)
  return vocab, pairs


class ClipTokenizer:
  """prompts -> int32 [B, max_length] ids, as transformers' CLIPTokenizer
  with padding='max_length', truncation=True gives them."""

  def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
               *, bos_token: str = DEFAULTS['bos_token'],
               eos_token: str = DEFAULTS['eos_token'],
               unk_token: str = DEFAULTS['unk_token'],
               pad_token: str = DEFAULTS['pad_token'],
               max_length: int = MAX_LENGTH, source: str = 'the vocabulary'):
    for name, tok in (('bos', bos_token), ('eos', eos_token),
                      ('unk', unk_token), ('pad', pad_token)):
      if tok not in vocab:
        raise UserError(f'{source} lacks the {name} token {tok!r}')
    if max_length < 2:
      raise UserError(f'{source}: model_max_length {max_length} is under 2')
    try:
      bpe = BPE(vocab=dict(vocab), merges=list(merges), dropout=None,
                continuing_subword_prefix='', end_of_word_suffix='</w>',
                fuse_unk=False, unk_token=unk_token)
    except Exception as e:  # tokenizers raises plain Exceptions
      raise UserError(f'{source} is not a valid BPE vocabulary: '
                      f'{describe(e)}') from e
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r'\s+'), ' '),
        normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior='removed', invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    # transformers registers these as special tokens, matched verbatim in the
    # raw text before normalisation.
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in dict.fromkeys(
                                (unk_token, bos_token, eos_token, pad_token))])
    self._tokenizer = tok
    self.bos_id = vocab[bos_token]
    self.eos_id = vocab[eos_token]
    self.pad_id = vocab[pad_token]
    self.max_length = max_length
    self.vocab_size = len(vocab)
    self.last_truncated = 0

  @classmethod
  def from_folder(cls, path: str) -> 'ClipTokenizer':
    """The tokenizer a pipeline's tokenizer/ folder describes."""
    def j(name: str) -> str:
      return files.join(path, name)
    if not files.isdir(path):
      raise UserError(f'{path} is not a folder' if files.exists(path)
                      else f'{path} does not exist')
    if files.isfile(j('tokenizer.json')):
      source = j('tokenizer.json')
      vocab, merges = _vocab_merges_from_json(source)
    elif files.isfile(j('vocab.json')) and files.isfile(j('merges.txt')):
      source = j('vocab.json')
      vocab, merges = _vocab_merges_from_files(source, j('merges.txt'))
    else:
      raise UserError(f'{path} holds neither tokenizer.json nor vocab.json '
                      'and merges.txt')
    kw: dict[str, Any] = {}
    for name in ('tokenizer_config.json', 'special_tokens_map.json'):
      if not files.isfile(j(name)):
        continue
      cfg = _read_json(j(name))
      if not isinstance(cfg, dict):
        raise UserError(f'{j(name)} is not a JSON object')
      for key in DEFAULTS:
        if cfg.get(key) is not None:
          kw[key] = _token(cfg[key], j(name))
      m = cfg.get('model_max_length')
      if isinstance(m, int) and 2 <= m <= 1 << 20:  # not transformers' 1e30
        kw['max_length'] = m
    return cls(vocab, merges, source=source, **kw)

  def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, int]:
    """(ids int32 [B, max_length], how many prompts were cut to fit)."""
    if isinstance(prompts, str):
      raise TypeError('prompts is a sequence of str, not one str')
    for p in prompts:
      if not isinstance(p, str):
        raise TypeError(f'a prompt is a str, got {type(p).__name__}')
    L = self.max_length
    out = np.full((len(prompts), L), self.pad_id, np.int32)
    cut = 0
    for i, enc in enumerate(self._tokenizer.encode_batch(
        list(prompts), add_special_tokens=False)):
      ids = enc.ids
      if len(ids) > L - 2:
        ids = ids[:L - 2]
        cut += 1
      out[i, :len(ids) + 2] = [self.bos_id, *ids, self.eos_id]
    return out, cut

  def __call__(self, prompts: Sequence[str]) -> np.ndarray:
    """int32 [B, max_length]; `last_truncated` then says how many prompts
    were cut."""
    ids, self.last_truncated = self.encode(prompts)
    return ids
