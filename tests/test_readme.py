"""The README's first usage example runs as written."""

import os
import re

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def test_readme_usage_example_runs():
  with open(README) as f:
    text = f.read()
  section = text.split('## Usage', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  exec(compile(code, 'README.md', 'exec'), {})  # pylint: disable=exec-used
