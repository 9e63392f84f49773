"""The byte tokenizer: round trips in any language, padding, truncation."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import tokenizer


@pytest.mark.parametrize('text', ['un siete escrito a mano', 'el número ñandú',
                                  '数字七', 'семь', '', 'a 7 🙂'])
def test_round_trip_of_non_ascii_text(text):
  tokens = tokenizer.tokenize(text)
  assert tokens.shape == (tokenizer.MAX_LEN,) and tokens.dtype == np.int32
  assert tokens[0] == tokenizer.BOS
  n = len(text.encode('utf-8'))
  assert tokens[n + 1] == tokenizer.EOS
  assert (tokens[n + 2:] == tokenizer.PAD).all()
  assert tokenizer.detokenize(tokens) == text


def test_an_over_long_prompt_is_cut_at_a_character_boundary_with_a_warning():
  text = 'a' + 'ñ' * 30                # 61 UTF-8 bytes; 46 fit
  with pytest.warns(tokenizer.PromptTruncated, match='cut to'):
    tokens = tokenizer.tokenize(text)
  assert tokenizer.detokenize(tokens) == 'a' + 'ñ' * 22   # 45 bytes: the
  assert tokens[-2:].tolist() == [tokenizer.EOS, tokenizer.PAD]  # 23rd would split
  with warnings.catch_warnings():
    warnings.simplefilter('error')      # a prompt that fits: no warning
    tokenizer.tokenize('x' * 46)


def test_attention_mask_reads_bos_to_eos_whatever_follows():
  tokens = tokenizer.tokenize_all(['ab', ''], max_len=6)
  mask = np.asarray(tokenizer.attention_mask(jnp.asarray(tokens)))
  assert mask.tolist() == [[True] * 4 + [False] * 2, [True] * 2 + [False] * 4]
  junk = tokens.copy()
  junk[0, 4:], junk[1, 2:] = 65, tokenizer.EOS
  np.testing.assert_array_equal(tokenizer.attention_mask(jnp.asarray(junk)), mask)


def test_a_prompt_must_be_a_string():
  with pytest.raises(TypeError):
    tokenizer.tokenize(b'bytes')
