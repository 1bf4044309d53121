"""Run exported TorchScript files in a process that never imports fxprune.

Usage: python load_torchscript.py MANIFEST.json

The manifest is a list of {"model": path, "input": path, "output": path}.
Each input file holds a tuple of tensors (torch.save); each output is written
with torch.save. Exits non-zero if fxprune was imported, proving the files
are self-contained.
"""

import json
import sys

import torch


def main(manifest_path: str) -> int:
    with open(manifest_path) as f:
        jobs = json.load(f)
    for job in jobs:
        module = torch.jit.load(job["model"], map_location="cpu")
        args = torch.load(job["input"], weights_only=True)
        with torch.no_grad():
            out = module(*args)
        torch.save(out, job["output"])
    leaked = sorted(name for name in sys.modules if name == "fxprune" or name.startswith("fxprune."))
    if leaked:
        print(f"fxprune was imported: {leaked}", file=sys.stderr)
        return 1
    print(f"ran {len(jobs)} TorchScript files without fxprune")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
