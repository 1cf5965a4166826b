"""compiler/source_digest.py, the key of cached compiled directories: an edit to code that goes into a graph
(or into the weights a directory stores) changes it; an edit elsewhere does not."""
from __future__ import annotations

import shutil

import pytest

from bucketserve.compiler.source_digest import PACKAGE_DIR, source_digest


@pytest.fixture
def package_copy(tmp_path):
    copy = tmp_path / "bucketserve"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return copy


@pytest.mark.parametrize("edited", ["quantization/modules.py", "quantization/layout.py", "models/llama.py",
                                    "kernels/quantized_linear.cpp", "compiler/graph_specs.py", "runtime/weights.py"])
def test_an_edit_to_code_that_goes_into_a_graph_changes_the_digest(package_copy, edited):
    before = source_digest(package_copy)
    assert before == source_digest(PACKAGE_DIR)  # the copy is the package as it is
    with open(package_copy / edited, "a") as file:
        file.write("\n// edited\n" if edited.endswith(".cpp") else "\n# edited\n")
    assert source_digest(package_copy) != before


def test_a_new_file_under_quantization_changes_the_digest(package_copy):
    before = source_digest(package_copy)
    (package_copy / "quantization" / "new_scheme.py").write_text("BITS = 3\n")
    assert source_digest(package_copy) != before


def test_an_edit_to_serving_code_keeps_the_digest(package_copy):
    before = source_digest(package_copy)
    with open(package_copy / "engine" / "scheduler.py", "a") as file:
        file.write("\n# edited\n")
    assert source_digest(package_copy) == before
