"""The README's "Your own PNG folder" example, run verbatim: its labels CSV and its commands, on three phantom PNGs
named as the example names them, with the shipped phantom-cxr64 weights (found beside the package, from any
folder). What a newcomer copies from the README must work as it stands."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from gmia.data.phantoms import generate

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "Your own PNG folder"  # the heading of the README section this test runs
IMAGE_COLUMNS = ("image", "file", "path", "filename")  # what gmia takes as the image column by default
PATIENT_COLUMNS = ("patient", "patient_id")


def readme_section(text: str, heading: str) -> str:
    """The README section whose heading contains ``heading``, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("#") and heading in line), None)
    assert start is not None, f"README.md has no heading containing {heading!r}"
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((j for j in range(start + 1, len(lines))
                if re.match(rf"#{{1,{level}}} ", lines[j])), len(lines))
    return "\n".join(lines[start:end])


def fenced_block(section: str, language: str) -> str:
    """The first ```language block of ``section``."""
    m = re.search(rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$", section, flags=re.M | re.S)
    assert m is not None, f"the README section {SECTION!r} has no ```{language} block"
    return m.group(1)


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"the README's gmia anonymize command has no {name}"
    return argv[argv.index(name) + 1]


def test_readme_png_folder_example_runs_verbatim(tmp_path):
    section = readme_section(README.read_text(encoding="utf-8"), SECTION)
    csv_text = fenced_block(section, "csv")
    commands = [line for line in fenced_block(section, "bash").splitlines() if line.strip()]
    assert not any(line.rstrip().endswith("\\") for line in commands), "one command per line: the test runs lines"
    anonymize = [shlex.split(line) for line in commands if line.lstrip().startswith("gmia anonymize")]
    assert len(anonymize) == 1, "the bash block runs `gmia anonymize` once"
    argv = anonymize[0]
    input_dir, labels_path, out_dir = (tmp_path / option(argv, n) for n in ("--input", "--labels", "--out"))

    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(rows) == 3, "the example labels file lists three images"
    columns = list(rows[0])
    image_column = option(argv, "--image-column") if "--image-column" in argv else \
        next(c for c in IMAGE_COLUMNS if c in columns)
    patient_column = option(argv, "--patient-column") if "--patient-column" in argv else \
        next((c for c in PATIENT_COLUMNS if c in columns), None)
    findings = [c for c in columns if c not in (image_column, patient_column)]
    assert findings, "the example labels file has finding columns"

    # the folder the README names: three 64x64 grey chest phantoms under the example's file names
    images = generate("cxr", patients=3, studies=1, size=64, seed=7).images
    for row, image in zip(rows, images):
        path = input_dir / row[image_column]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(image[0] * 255).astype(np.uint8)).save(path)  # 2-D uint8: 8-bit grey
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    labels_path.write_text(csv_text, encoding="utf-8")

    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for line in commands:
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README command failed: {line}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"

    released = sorted((out_dir / "images").glob("*.png"))
    assert len(released) == 3
    assert (out_dir / "manifest.jsonl").is_file() and (out_dir / "run.json").is_file()
    manifest = (out_dir / "manifest.jsonl").read_text()
    assert [json.loads(r)["status"] for r in manifest.splitlines()] == ["released"] * 3

    labels_text = (out_dir / "labels.csv").read_text()
    out_rows = list(csv.DictReader(io.StringIO(labels_text)))
    assert len(out_rows) == 3
    assert list(out_rows[0]) == ["image", *findings]
    assert {r["image"] for r in out_rows} == {f"images/{p.name}" for p in released}

    def values(r):  # 0/1/empty as numbers, so "1" and "1.0" compare equal
        return tuple(float(r[f]) if r[f].strip() else None for f in findings)

    assert sorted(map(values, out_rows), key=repr) == sorted(map(values, rows), key=repr)

    # nothing public names a source file or a patient
    secrets = {row[image_column] for row in rows} | {Path(row[image_column]).stem for row in rows}
    if patient_column:
        secrets |= {row[patient_column] for row in rows if row[patient_column]}
    for public in (labels_text, manifest):
        for secret in secrets:
            assert secret not in public, f"{secret!r} leaks into the public tables"
