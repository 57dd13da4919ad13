"""Make ``tests/golden/torchvision_resnet_keys.json``: torchvision's ResNet state_dict layout.

Developer-only generator. For resnet18, resnet34, resnet50, resnet101 and
resnet152 built with ``weights=None`` (nothing is downloaded) it records every
state_dict entry, parameters and buffers alike (``num_batches_tracked`` has
shape ``[]``), as ``[key, [shape...]]`` in state_dict order. The test suite
compares resnet-edge's own ResNets against this list, so torchvision and timm
checkpoints keep loading with ``strict=True``.

torchvision cannot be installed beside the project's torch, so run it from the
repository root in a throwaway venv and delete that venv afterwards::

    python3 -m venv /tmp/tvvenv
    /tmp/tvvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tvvenv/bin/python scripts/make_torchvision_golden.py
    rm -rf /tmp/tvvenv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torchvision
from torchvision import models

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "tests" / "golden" / "torchvision_resnet_keys.json"
GENERATOR = "scripts/make_torchvision_golden.py"
MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

Entry = tuple[str, list[int]]


def state_dict_layout(name: str) -> list[Entry]:
    """Every state_dict key of ``torchvision.models.<name>(weights=None)`` with its shape."""
    model = models.get_model(name, weights=None)
    return [(key, list(tensor.shape)) for key, tensor in model.state_dict().items()]


def render(layouts: dict[str, list[Entry]]) -> str:
    """JSON with one state_dict entry per line, so diffs stay readable."""
    lines = [
        "{",
        f'  "generated_by": {json.dumps(GENERATOR)},',
        f'  "torch": {json.dumps(torch.__version__)},',
        f'  "torchvision": {json.dumps(torchvision.__version__)},',
        '  "models": {',
    ]
    for m, (name, entries) in enumerate(layouts.items()):
        lines.append(f'    {json.dumps(name)}: {{"state_dict": [')
        lines.extend(
            f"      {json.dumps([key, shape])}{',' if i < len(entries) - 1 else ''}"
            for i, (key, shape) in enumerate(entries)
        )
        lines.append("    ]}" + ("," if m < len(layouts) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSON file")
    args = parser.parse_args()
    out: Path = args.out

    layouts = {name: state_dict_layout(name) for name in MODEL_NAMES}
    text = render(layouts)
    expected = {n: {"state_dict": [[k, s] for k, s in e]} for n, e in layouts.items()}
    assert json.loads(text)["models"] == expected, "hand-rendered JSON does not round-trip"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    counts = ", ".join(f"{n}: {len(e)}" for n, e in layouts.items())
    print(f"wrote {out} ({len(text.encode())} bytes; entries {counts})")


if __name__ == "__main__":
    main()
