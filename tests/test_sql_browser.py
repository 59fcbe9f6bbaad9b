"""The SQL console in a real browser (headless Chromium): create a database, run a
script with Ctrl+Enter, see each result in a grid and the table appear in the schema
beside the editor, an inline error, and the history kept in localStorage brings a
statement back; no console errors (the CSP allows the script)."""

from __future__ import annotations

import pytest

from conftest import AgoraServer
from test_browser import browser, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


def test_console_runs_statements_and_keeps_history(server: AgoraServer, page):  # noqa: F811
    name, password = server.create_user()
    log_in(page, server.url, name, password)
    page.goto(server.url + "/sql")
    page.fill("input[name=name]", "web")
    page.click("button:has-text('Create')")
    page.wait_for_url(f"{server.url}/sql/console?db={name}%2Fweb")
    page.fill("#sql", "CREATE TABLE t (x integer PRIMARY KEY, s text);\nINSERT INTO t VALUES (1, 'one'), (2, NULL)")
    page.press("#sql", "Control+Enter")
    page.wait_for_selector(".sql-status:has-text('INSERT 0 2')")
    assert page.locator(".sql-status").all_inner_texts() == ["CREATE TABLE", "INSERT 0 2"]
    page.click("#sql-schema summary:has-text('t')")
    assert page.locator("#sql-schema li[data-column='x']").inner_text().startswith("x")
    page.fill("#sql", "SELECT x, s FROM t ORDER BY x")
    page.click("button:has-text('Run')")
    page.wait_for_selector(".sql-status:has-text('SELECT 2')")
    assert page.locator("table.sql-rows tbody tr").count() == 2
    assert page.locator("table.sql-rows td.null").count() == 1
    assert page.locator("table.sql-rows th .type").all_text_contents() == ["int4", "text"]
    page.fill("#sql", "SELECT * FROM missing")
    page.press("#sql", "Control+Enter")
    page.wait_for_selector("#sql-error")
    assert "42P01" in page.locator("#sql-error").inner_text()
    page.click("#history-box summary")
    items = page.locator("#history li")
    assert items.count() == 3 and items.first.inner_text() == "SELECT * FROM missing"
    page.fill("#sql", "")
    items.nth(1).click()
    assert page.input_value("#sql") == "SELECT x, s FROM t ORDER BY x"
    assert page.console_errors == []
