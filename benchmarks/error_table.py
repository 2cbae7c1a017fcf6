"""Prints docs/errors.md's table of config mistakes with the message each one gives, by running
every row of tests/test_config.py's BAD_VALUES through train() and of its EVAL_BAD_VALUES through
eval.py's evaluate_checkpoint().

    .venv/bin/python benchmarks/error_table.py
"""

import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_config import BAD_VALUES, EVAL_BAD_VALUES
from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.eval import evaluate_checkpoint
from vaelab.training import train


def typed(overrides: list[str]) -> str:
    """The overrides as they are typed at a shell prompt: quoted where bash would change them
    (``{a,b}`` is brace-expanded, ``[...]`` a file-name pattern), and with a table's ``|`` escaped."""
    return " ".join(shlex.quote(o) for o in overrides).replace("|", "\\|")


def message(run) -> str:
    try:
        run()
        return "(no error!)"
    except UserError as e:
        return str(e)


def main() -> None:
    print("| command-line mistake | message |")
    print("|---|---|")
    for overrides, _ in BAD_VALUES:
        with tempfile.TemporaryDirectory() as out:
            text = message(lambda: train(compose_config(overrides, out))).replace(out, "<run dir>")
        print(f"| `{typed(overrides)}` | {text.replace('|', '/')} |")
    for overrides, _ in EVAL_BAD_VALUES:  # with a checkpoint path unless the row gives one
        ckpt = [] if any(o.startswith("ckpt_path=") for o in overrides) else ["ckpt_path=/nonexistent/model.ckpt"]
        with tempfile.TemporaryDirectory() as out:
            text = message(
                lambda: evaluate_checkpoint(compose_config([*ckpt, *overrides], f"{out}/eval", config_name="eval"))
            )
        shown = " ".join(["ckpt_path=<file>"] * len(ckpt) + [typed(overrides)]).strip()
        print(f"| `eval.py {shown}` | {text.replace('|', '/')} |")


if __name__ == "__main__":
    main()
