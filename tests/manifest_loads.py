"""Loading a compiled directory under edited manifests, in a child process, so that a load that crashes (heap
corruption, SIGBUS, SIGABRT) or hangs fails the test instead of killing pytest.

    python tests/manifest_loads.py CASES.json     (run by load_cases below)

CASES.json: {"directory": a copy to edit in place, "baseline": bool, "cases": [{"set": [[path, value], ...],
"delete": [path, ...], "reseal": bool}]}, a path being the keys from the manifest down to a field. For each case the child writes the edited manifest, loads the directory, generates greedily
and prints one JSON line: {"case": i, "tokens": [...]} or {"case": i, "error": type, "message": ...}; before each
it prints {"start": i}, so a crash names its case. Case -1, the manifest as compiled, comes first.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

PROMPT = [[5, 9, 17, 33, 2, 100, 7, 250]]
NEW_TOKENS = 4


def edited(manifest: dict, case: dict) -> dict:
    from bucketserve.compiler.manifest import seal

    manifest = copy.deepcopy(manifest)

    def holder_of(path):
        holder = manifest
        for key in path[:-1]:
            holder = holder[key]
        return holder

    for path, value in case.get("set", []):
        holder_of(path)[path[-1]] = value
    for path in case.get("delete", []):
        del holder_of(path)[path[-1]]
    return seal(manifest) if case.get("reseal") else manifest


def main(cases_file: str) -> None:
    import torch

    from bucketserve import AutoModelForCausalLM
    from bucketserve.compiler.manifest import MANIFEST, CompiledModelError

    job = json.loads(Path(cases_file).read_text())
    directory = Path(job["directory"])
    original = json.loads((directory / MANIFEST).read_text())
    baseline = [(-1, None)] if job["baseline"] else []
    for index, case in [*baseline, *enumerate(job["cases"])]:
        print(json.dumps({"start": index}), flush=True)
        manifest = original if case is None else edited(original, case)
        (directory / MANIFEST).write_text(json.dumps(manifest))
        try:
            model = AutoModelForCausalLM.from_pretrained(directory)
            tokens = model.generate(torch.tensor(PROMPT), max_new_tokens=NEW_TOKENS)[0].tolist()
            print(json.dumps({"case": index, "tokens": tokens}), flush=True)
        except CompiledModelError as error:
            print(json.dumps({"case": index, "error": "CompiledModelError", "message": str(error)}), flush=True)
        except Exception as error:  # noqa: BLE001 - reported, and the test fails on it
            print(json.dumps({"case": index, "error": type(error).__name__, "message": str(error)[:500]}), flush=True)
    (directory / MANIFEST).write_text(json.dumps(original))


def load_cases(directory: Path, cases: list[dict], work: Path, baseline: bool = True,
               timeout_s: float = 900) -> tuple[list[int] | None, list[dict]]:
    """(the unedited directory's greedy tokens, or None without baseline; one result per case); asserts the
    child neither crashed nor hung."""
    cases_file = work / "cases.json"
    cases_file.write_text(json.dumps({"directory": str(directory), "baseline": baseline, "cases": cases}))
    try:
        child = subprocess.run([sys.executable, __file__, str(cases_file)], capture_output=True, text=True, timeout=timeout_s)
        stdout, stderr, returncode = child.stdout, child.stderr, child.returncode
    except subprocess.TimeoutExpired as expired:
        stdout, stderr, returncode = _text(expired.stdout), _text(expired.stderr), "a hang"
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    results = {line["case"]: line for line in lines if "case" in line}
    started = [line["start"] for line in lines if "start" in line]
    last = started[-1] if started else None
    assert returncode == 0 and len(results) == len(cases) + baseline, (
        f"the loading child ended with {returncode} during case {last}: "
        f"{cases[last] if last not in (None, -1) else 'the unedited manifest'}\n{stderr[-3000:]}")
    if baseline:
        assert "tokens" in results[-1], results[-1]
    return results[-1]["tokens"] if baseline else None, [results[i] for i in range(len(cases))]


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1])
