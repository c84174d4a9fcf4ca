"""UTF-8 byte tokenizer of the Perceiver IO language model (Sec. 4.1).

Shapes: L sequence length.

Ids 0-5 are reserved (PAD, BOS, EOS, MASK, CLS, SEP); byte value v has id
v + 6, so the vocabulary has 256 + 6 = 262 entries.
"""

from typing import Sequence, Union

import numpy as np


class BytesTokenizer:
  """Text <-> byte ids with 6 reserved special ids.

  Attributes:
    pad_token, bos_token, eos_token, mask_token, cls_token, sep_token: the
      special ids 0..5.
    vocab_size: 262.
  """

  pad_token = 0
  bos_token = 1
  eos_token = 2
  mask_token = 3
  cls_token = 4
  sep_token = 5
  num_reserved_tokens = 6
  vocab_size = 256 + num_reserved_tokens

  def to_int(self, inputs: Union[str, bytes]) -> np.ndarray:
    """Encodes text (as UTF-8) or bytes to ids.

    Args:
      inputs: a str (encoded as UTF-8) or bytes.

    Returns:
      [L] int32 ids, byte + 6 (no BOS/EOS is added).

    Raises:
      ValueError: if `inputs` is neither str nor bytes.
    """
    if isinstance(inputs, str):
      inputs = inputs.encode('utf-8')
    if not isinstance(inputs, (bytes, bytearray)):
      raise ValueError(
        f'inputs: expected str or bytes, got {type(inputs).__name__}.'
      )
    ids_L = np.frombuffer(bytes(inputs), dtype=np.uint8).astype(np.int32)
    return ids_L + self.num_reserved_tokens

  def to_string(self, inputs: Union[Sequence[int], np.ndarray]) -> str:
    """Decodes ids to text, dropping the special ids.

    Args:
      inputs: [L] ids (any integer sequence or array).

    Returns:
      The UTF-8 decoding of the byte ids (ids < 6 dropped); invalid UTF-8 is
      replaced by U+FFFD.

    Raises:
      ValueError: on ids outside [0, vocab_size) or a rank other than 1.
    """
    ids_L = np.asarray(inputs)
    if ids_L.ndim != 1:
      raise ValueError(
        f'inputs: expected a rank-1 sequence of ids, got shape {ids_L.shape}.'
      )
    if ids_L.size and (ids_L.min() < 0 or ids_L.max() >= self.vocab_size):
      raise ValueError(
        f'inputs: expected ids in [0, {self.vocab_size}), got '
        f'min {ids_L.min()} and max {ids_L.max()}.'
      )
    ids_L = ids_L.astype(np.int64)
    byte_ids = ids_L[ids_L >= self.num_reserved_tokens]
    raw = (byte_ids - self.num_reserved_tokens).astype(np.uint8).tobytes()
    return raw.decode('utf-8', errors='replace')
