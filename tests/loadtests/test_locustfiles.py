"""Generated locustfiles: requests as data beside a fixed file, never pasted into code."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from vouch.loadtests.locustfiles import Request, generated_locustfile, parse_request, template_text, write_locustfile


@pytest.mark.parametrize(
    ("text", "request_"),
    [
        ("/", Request("GET", "/")),
        ("/cart?id=1", Request("GET", "/cart?id=1")),
        ("post /orders", Request("POST", "/orders")),
        ("  DELETE   /orders/1 ", Request("DELETE", "/orders/1")),
    ],
)
def test_requests_are_get_unless_written(text: str, request_: Request) -> None:
    assert parse_request(text) == request_


def test_the_locustfile_reads_its_requests_from_json_beside_it(tmp_path: Path) -> None:
    evil = Request("GET", '/"""; import os; os.system("x") #')
    path = write_locustfile([parse_request("/a"), parse_request("POST /b"), parse_request("/a"), evil], tmp_path)
    assert path == tmp_path / "locustfile.py"
    assert path.read_text() == template_text()
    ast.parse(path.read_text())  # valid Python, whatever the paths are
    endpoints = json.loads((tmp_path / "endpoints.json").read_text())
    assert [e["name"] for e in endpoints] == ["GET /a", "POST /b", evil.name]


def test_a_generated_locustfile_lives_in_a_temporary_folder_of_its_own() -> None:
    with generated_locustfile([parse_request("/")]) as path:
        assert path.is_file()
        assert (path.parent / "endpoints.json").is_file()
    assert not path.parent.exists()


def test_nothing_to_send_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no requests"):
        write_locustfile([], tmp_path)
