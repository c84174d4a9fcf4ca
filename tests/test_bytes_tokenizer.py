"""Tests of perceiver/bytes_tokenizer.py against hand-computed ids."""

import numpy as np
import pytest

from perceiver import bytes_tokenizer


@pytest.fixture
def tok():
  return bytes_tokenizer.BytesTokenizer()


def test_special_ids_and_vocab_size(tok):
  assert (
    tok.pad_token,
    tok.bos_token,
    tok.eos_token,
    tok.mask_token,
    tok.cls_token,
    tok.sep_token,
  ) == (0, 1, 2, 3, 4, 5)
  assert tok.vocab_size == 262


def test_to_int_is_utf8_bytes_plus_6(tok):
  ids = tok.to_int('Hi!')
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, [72 + 6, 105 + 6, 33 + 6])
  # 'é' is two UTF-8 bytes, 0xC3 0xA9; the largest byte maps to 261.
  np.testing.assert_array_equal(tok.to_int('é'), [0xC3 + 6, 0xA9 + 6])
  np.testing.assert_array_equal(tok.to_int(b'\x00\xff'), [6, 261])
  assert tok.to_int('').shape == (0,)


def test_str_and_bytes_agree(tok):
  text = 'Perceiver IO — 中文 ✓'
  np.testing.assert_array_equal(
    tok.to_int(text), tok.to_int(text.encode('utf-8'))
  )


@pytest.mark.parametrize(
  'text', ['', 'a', 'Hello, world.', 'ünïcödé ✓ 🙂', 'line\nbreak\ttab']
)
def test_round_trip(tok, text):
  assert tok.to_string(tok.to_int(text)) == text


def test_to_string_drops_special_ids(tok):
  ids = (
    [tok.bos_token]
    + list(tok.to_int('a b'))
    + [
      tok.mask_token,
      tok.sep_token,
      tok.eos_token,
      tok.pad_token,
      tok.pad_token,
    ]
  )
  assert tok.to_string(ids) == 'a b'
  assert tok.to_string(np.array([0, 1, 2, 3, 4, 5])) == ''


def test_to_string_replaces_invalid_utf8(tok):
  # A lone continuation byte (0x80) and a truncated 2-byte sequence (0xC3).
  ids = [ord('x') + 6, 0x80 + 6, ord('y') + 6, 0xC3 + 6]
  assert tok.to_string(ids) == 'x\ufffdy\ufffd'


def test_masked_span_like_the_colab(tok):
  text = 'This is an incomplete sentence where some words are missing.'
  ids = tok.to_int(text)
  ids[51:60] = tok.mask_token
  assert tok.to_string(ids) == text[:51] + text[60:]


@pytest.mark.parametrize('bad', [[262], [-1], [[7, 8]]])
def test_to_string_rejects_out_of_range_or_rank(tok, bad):
  with pytest.raises(ValueError, match='inputs'):
    tok.to_string(bad)


def test_to_int_rejects_other_types(tok):
  with pytest.raises(ValueError, match='inputs'):
    tok.to_int([1, 2, 3])
