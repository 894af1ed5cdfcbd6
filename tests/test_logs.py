"""The service's log keeps one line per record, whatever text nodes and users put in it."""

from __future__ import annotations

import logging

from served import ServedCorral, corral

from corral.logs import EscapeControlCharacters, escape_controls

# cursor up, erase that line, write a line of one's own, then hide whatever follows
HIDING = "\x1b[1A\x1b[2K2026-01-01 00:00:00 INFO corral.engine: all is well\x1b[8m"


def test_control_characters_are_written_as_escapes():
    assert escape_controls("a\nb\r\tc\x00\x7f\x9b") == "a\\nb\\r\\tc\\x00\\x7f\\x9b"
    assert escape_controls(HIDING).count("\\x1b[") == 3
    assert escape_controls("left\u202eright\u2028") == "left\\u202eright\\u2028"
    assert escape_controls("plain text, ünïcödé and 漢字") == "plain text, ünïcödé and 漢字"


def test_a_record_keeps_to_one_line(caplog):
    logger = logging.getLogger("corral.test")
    logger.addFilter(EscapeControlCharacters())
    try:
        with caplog.at_level(logging.INFO):
            logger.info("node %s said %r and %s", "w-1\nforged", 7, "\x1b[2J")
    finally:
        logger.filters.clear()
    (record,) = caplog.records
    assert record.getMessage() == "node w-1\\nforged said 7 and \\x1b[2J"


def test_what_a_failing_role_script_prints_cannot_forge_or_hide_service_log_lines(tmp_path):
    image = tmp_path / "image"
    script = image / "etc" / "corral" / "roles" / "worker" / "configure"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{HIDING}' >&2\nexit 1\n")
    script.chmod(0o755)
    document = tmp_path / "c.yaml"
    document.write_text("image: x\nnodes: [{group: worker, provides: [worker]}]\n")
    with ServedCorral(tmp_path / "svc", "--backend-option", f"agent_image={image}") as served:
        run = corral("run", "--cluster", str(document), env=served.env())
        assert run.returncode == 7, run.stderr
        assert "\x1b" not in run.stderr  # nor the user's terminal
        assert "\\x1b[2K2026-01-01" in run.stderr
        log = served.log_path.read_bytes()
    assert b"\x1b" not in log
    failed = [line for line in log.decode().splitlines() if "-> failed" in line]
    assert failed and "\\x1b[1A\\x1b[2K2026-01-01 00:00:00 INFO" in failed[0]
    assert not any(line.startswith("2026-01-01") for line in log.decode().splitlines())
