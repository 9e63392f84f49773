"""Captions from class labels, in English and Spanish, for text-conditioned
training and for measuring whether a model follows prompts.

Each class has synonyms (with their article) and each language templates;
`TRAIN` templates make the training captions, `HELD_OUT` ones are never
trained on, so a model that follows them learned the words, not the
sentences.
"""

from __future__ import annotations

import numpy as np

from ddpm_jax import tokenizer
from ddpm_jax.options import LANGUAGES

# class -> language -> synonyms as (article, word)
_DIGITS = {
    'en': [('a', w) if w[0] not in 'e' else ('an', w) for w in (
        'zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight',
        'nine')],
    'es': [('un', w) for w in (
        'cero', 'uno', 'dos', 'tres', 'cuatro', 'cinco', 'seis', 'siete', 'ocho',
        'nueve')],
}
_FASHION = {
    'en': [
        [('a', 't-shirt'), ('a', 'top')],
        [('', 'trousers'), ('', 'pants')],
        [('a', 'pullover'), ('a', 'sweater')],
        [('a', 'dress')],
        [('a', 'coat'), ('a', 'jacket')],
        [('a', 'sandal')],
        [('a', 'shirt')],
        [('a', 'sneaker'), ('a', 'trainer')],
        [('a', 'bag'), ('a', 'handbag')],
        [('an', 'ankle boot'), ('a', 'boot')],
    ],
    'es': [
        [('una', 'camiseta')],
        [('unos', 'pantalones'), ('un', 'pantalón')],
        [('un', 'jersey'), ('un', 'suéter')],
        [('un', 'vestido')],
        [('un', 'abrigo'), ('una', 'chaqueta')],
        [('una', 'sandalia')],
        [('una', 'camisa')],
        [('una', 'zapatilla'), ('una', 'deportiva')],
        [('un', 'bolso')],
        [('una', 'bota'), ('un', 'botín')],
    ],
}

# {a}: article and word ("an eight", "una bota"); {w}: the word; {n}: numeral.
# A training caption is a prefix, a body and a suffix, so that the class word
# sits at many positions (the encoder's positions are learned).
_TRAIN_PARTS = {
    'digits': {
        'en': (('', 'this is ', 'here is ', 'show me ', 'an image of ',
                'a scan of ', 'one more: '),
               ('{a}', '{w}', 'a handwritten {w}', 'the digit {n}',
                'the number {w}', '{a} written by hand', 'digit {n}',
                'handwritten digit {w}'),
               ('', ' in white ink', ', centred')),
        'es': (('', 'esto es ', 'aquí hay ', 'enséñame ', 'una foto de ',
                'un escaneo de ', 'otro más: '),
               ('{a}', '{w}', '{a} escrito a mano', 'el dígito {n}',
                'el número {w}', 'dígito {n}', 'número {w} manuscrito'),
               ('', ' en tinta blanca', ', centrado')),
    },
    'fashion': {
        'en': (('', 'this is ', 'here is ', 'show me ', 'a scan of '),
               ('{a}', '{w}', 'a photo of {a}', 'a picture of {a}',
                'a grey {w}', 'a small photo of {a}'),
               ('', ' on black', ', centred')),
        'es': (('', 'esto es ', 'aquí hay ', 'enséñame ', 'un escaneo de '),
               ('{a}', '{w}', 'una foto de {a}', 'una imagen de {a}',
                'foto en gris de {a}'),
               ('', ' sobre negro', ', centrado')),
    },
}
TRAIN = {name: {lang: tuple(p + b + s for p in pre for b in body for s in suf)
                for lang, (pre, body, suf) in langs.items()}
         for name, langs in _TRAIN_PARTS.items()}
HELD_OUT = {
    'digits': {
        'en': ('a picture of the number {w}', 'please draw {a}',
               'I wrote {a} on paper'),
        'es': ('una imagen del número {w}', 'dibuja {a}',
               'escribí {a} en un papel'),
    },
    'fashion': {
        'en': ('an image showing {a}', 'product shot: {w}',
               'I would like to buy {a}'),
        'es': ('una imagen que muestra {a}', 'foto de producto: {w}',
               'quiero comprar {a}'),
    },
}
CAPTION_SETS = tuple(TRAIN)


def _synonyms(name: str, lang: str, label: int) -> list[tuple[str, str]]:
  table = _DIGITS if name == 'digits' else _FASHION
  entry = table[lang][label]
  return entry if isinstance(entry, list) else [entry]


def num_classes(name: str) -> int:
  return len(_DIGITS['en'] if name == 'digits' else _FASHION['en'])


def captions(name: str, label: int, lang: str, split: str = 'train'
             ) -> list[str]:
  """Every caption of class `label` in `lang` from the `split` templates
  ('train' or 'held_out') that fits the tokenizer's length."""
  templates = (TRAIN if split == 'train' else HELD_OUT)[name][lang]
  out = []
  for template in templates:
    for article, word in _synonyms(name, lang, label):
      out.append(template.format(a=f'{article} {word}'.strip(), w=word,
                                 n=str(label)))
  fits = [c for c in out if len(c.encode('utf-8')) <= tokenizer.MAX_LEN - 2]
  return list(dict.fromkeys(fits))   # in order, without repeats; none cut


def caption_table(name: str, max_len: int = tokenizer.MAX_LEN) -> np.ndarray:
  """int32 [classes, K, max_len]: the training captions of every class, in
  every language, tokenised; shorter lists repeat to K."""
  rows = [[c for lang in LANGUAGES for c in captions(name, label, lang)]
          for label in range(num_classes(name))]
  k = max(len(r) for r in rows)
  return np.stack([tokenizer.tokenize_all([r[i % len(r)] for i in range(k)],
                                          max_len) for r in rows])


def held_out_prompts(name: str, lang: str, num: int) -> tuple[list[str], np.ndarray]:
  """`num` (prompt, label) pairs from the held-out templates: the classes in
  turn, each class's held-out captions in turn."""
  C = num_classes(name)
  per_class = [captions(name, c, lang, 'held_out') for c in range(C)]
  labels = np.arange(num) % C
  prompts = [per_class[c][(i // C) % len(per_class[c])] for i, c in enumerate(labels)]
  return prompts, labels
