"""Fills masked bytes of a sentence with the Perceiver IO byte-level MLM.

  python examples/fill_masked_bytes.py \
      --checkpoint language_perceiver_io_bytes.pickle

As the colab (masked_language_modelling.ipynb): the text "This is an
incomplete sentence where some words are missing." with bytes [51, 60)
(" missing.") masked; the released model is expected to restore them.
"""

from perceiver import tasks

import _common


def main():
  p = _common.parser(__doc__.splitlines()[0])
  p.add_argument('--text', default=tasks.MLM_EXAMPLE_TEXT)
  p.add_argument(
    '--span',
    nargs=2,
    type=int,
    action='append',
    metavar=('START', 'END'),
    help='byte range [START, END) to mask (repeatable); default '
    "the colab's 51 60",
  )
  args = p.parse_args()
  spans = (
    [tuple(s) for s in args.span]
    if args.span
    else list(tasks.MLM_EXAMPLE_SPANS)
  )
  params, state, overrides = _common.load('language_mlm', args.checkpoint)
  out = tasks.fill_masked_bytes(
    'language_mlm', params, state, args.text, spans, overrides=overrides
  )
  data = args.text.encode('utf-8')
  print('Input:     ', args.text)
  for (start, end), text in zip(spans, out.span_texts):
    print(
      f'Masked {start}:{end} {data[start:end].decode(errors="replace")!r}'
      f' -> predicted {text!r}'
    )
  print('Filled in: ', out.text)


if __name__ == '__main__':
  main()
