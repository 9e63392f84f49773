"""Captions from labels: both languages, held-out templates never trained on."""

import pytest

from ddpm_jax import captions, tokenizer


@pytest.mark.parametrize('name', captions.CAPTION_SETS)
def test_training_and_held_out_captions_are_disjoint_and_fit(name):
  for label in range(captions.num_classes(name)):
    for lang in captions.LANGUAGES:
      train = set(captions.captions(name, label, lang))
      held = set(captions.captions(name, label, lang, 'held_out'))
      assert len(train) >= 5 and len(held) >= 3 and not train & held
      assert all(len(c.encode()) <= tokenizer.MAX_LEN - 2 for c in train | held)


def test_captions_name_the_class_in_each_language():
  assert 'a handwritten seven' in captions.captions('digits', 7, 'en')
  assert 'un siete escrito a mano' in captions.captions('digits', 7, 'es')
  assert 'el dígito 7' in captions.captions('digits', 7, 'es')
  assert 'an ankle boot' in captions.captions('fashion', 9, 'en')
  assert 'una bota' in captions.captions('fashion', 9, 'es')


def test_caption_table_holds_every_training_caption_of_each_class():
  table = captions.caption_table('digits')
  assert table.shape[:1] == (10,) and table.shape[2] == tokenizer.MAX_LEN
  for label in (0, 7):
    rows = {tokenizer.detokenize(t) for t in table[label]}
    want = {c for lang in captions.LANGUAGES
            for c in captions.captions('digits', label, lang)}
    assert rows == want


def test_held_out_prompts_cycle_the_classes():
  prompts, labels = captions.held_out_prompts('digits', 'es', 25)
  assert labels.tolist() == [i % 10 for i in range(25)]
  assert prompts[3] == captions.captions('digits', 3, 'es', 'held_out')[0]
  assert prompts[13] == captions.captions('digits', 3, 'es', 'held_out')[1]
