"""Prints the README's table of config mistakes with the message each one gives, by running
every row of tests/test_config.py's BAD_VALUES through train().

    .venv/bin/python benchmarks/error_table.py
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_config import BAD_VALUES  # noqa: E402

from vaelab.config import compose_config  # noqa: E402
from vaelab.errors import UserError  # noqa: E402
from vaelab.train import train  # noqa: E402

print("| command-line mistake | message |")
print("|---|---|")
for overrides, _ in BAD_VALUES:
    with tempfile.TemporaryDirectory() as out:
        try:
            train(compose_config(overrides, out))
            message = "(no error!)"
        except UserError as e:
            message = str(e)
    print(f"| `{' '.join(overrides)}` | {message.replace('|', '/')} |")
