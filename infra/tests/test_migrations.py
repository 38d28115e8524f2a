"""Schema migrations stay additive, so the functions and workers of the previous version (still
serving during a deploy, or again after `deploy.sh --rollback`) never meet a schema they cannot
read or write. Workers apply the migrations at start; Lambda versions do not move with them.

The rule (README "Schema migrations"): a migration may create tables, add nullable columns or
columns with a DEFAULT, and add indexes. It may not DROP, RENAME, MODIFY or CHANGE anything, nor
TRUNCATE, nor add a NOT NULL column without a DEFAULT (the old code's INSERTs do not name it). A
column goes in two releases: stop using it, then (much later, deliberately) a reviewed exception.
"""

from __future__ import annotations

import re

import pytest

from conftest import MYSQL_RS


def rust_migrations(text: str) -> list[tuple[int, str]]:
    """(version, SQL) of `const MIGRATIONS: &[(u32, &str)] = &[(1, r"..."), ...];`: the tuples'
    string literals (raw r"..", r#".."#, or plain ".." with escapes), comments skipped."""
    m = re.search(r"const\s+MIGRATIONS\s*:[^=]*=\s*&\[", text)
    assert m, "no MIGRATIONS in mysql.rs"
    i, out = m.end(), []
    while True:
        i = _skip(text, i)
        if text[i] == "]":
            return out
        assert text[i] == "(", text[i:i + 40]
        v = re.match(r"\(\s*(\d+)\s*,", text[i:])
        assert v, text[i:i + 40]
        i = _skip(text, i + v.end())
        sql, i = _string(text, i)
        i = _skip(text, i)
        if text[i] == ",":  # a trailing comma in the tuple
            i = _skip(text, i + 1)
        assert text[i] == ")", text[i:i + 40]
        out.append((int(v.group(1)), sql))
        i = _skip(text, i + 1)
        if text[i] == ",":
            i += 1


def _skip(text: str, i: int) -> int:
    while True:
        while text[i].isspace():
            i += 1
        if text.startswith("//", i):
            i = text.index("\n", i)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        else:
            return i


def _string(text: str, i: int) -> tuple[str, int]:
    raw = re.match(r'r(#*)"', text[i:])
    if raw:
        end = '"' + raw.group(1)
        start = i + raw.end()
        stop = text.index(end, start)
        return text[start:stop], stop + len(end)
    assert text[i] == '"', text[i:i + 40]
    j, buf = i + 1, []
    while text[j] != '"':
        if text[j] == "\\":
            nxt = text[j + 1]
            if nxt == "\n":  # line continuation: the newline and the next line's indent go
                j += 2
                while text[j].isspace():
                    j += 1
                continue
            buf.append({"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}.get(nxt, nxt))
            j += 2
        else:
            buf.append(text[j])
            j += 1
    return "".join(buf), j + 1


def _strip(sql: str) -> str:
    """SQL without comments and string literals (a DEFAULT 'drop' is not a DROP)."""
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    sql = re.sub(r"(--|#)[^\n]*", " ", sql)
    return re.sub(r"'(?:[^'\\]|\\.|'')*'", "''", sql)


def _top_level(clauses: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in clauses:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


FORBIDDEN = [
    (r"\bDROP\b", "DROP removes what the previous code reads"),
    (r"\bRENAME\b", "RENAME hides a table or column from the previous code"),
    (r"\bTRUNCATE\b", "TRUNCATE deletes data"),
    (r"\bMODIFY\b", "MODIFY [COLUMN] changes a column under the previous code"),
    (r"\bCHANGE\b", "CHANGE [COLUMN] renames or retypes a column"),
]


def violations(sql: str) -> list[str]:
    """Why `sql` (one migration) is not additive; empty when it is."""
    out = []
    for stmt in (s.strip() for s in _strip(sql).split(";")):
        if not stmt:
            continue
        up = " ".join(stmt.upper().split())
        for pattern, why in FORBIDDEN:
            if re.search(pattern, up):
                out.append(f"{why}: {stmt[:80]}")
        alter = re.match(r"ALTER\s+TABLE\s+\S+\s+(.*)", up, re.S)
        if not alter:
            continue
        for clause in _top_level(alter.group(1)):
            add = re.match(r"ADD\s+(?:COLUMN\s+)?(.*)", clause, re.S)
            if not add or re.match(r"(KEY|INDEX|UNIQUE|PRIMARY|CONSTRAINT|FOREIGN|FULLTEXT|SPATIAL|CHECK)\b",
                                   add.group(1)):
                continue
            body = add.group(1)
            cols = _top_level(body[1:-1]) if body.startswith("(") and body.endswith(")") else [body]
            for col in cols:
                if re.search(r"\bNOT\s+NULL\b", col) and not re.search(r"\b(DEFAULT|AUTO_INCREMENT)\b", col):
                    out.append(f"NOT NULL column without a DEFAULT (the previous code's INSERTs omit it): {col[:80]}")
    return out


# ------------------------------------------------------------------ the project's migrations
def test_migrations_are_found():
    found = rust_migrations(MYSQL_RS.read_text())
    assert len(found) >= 4, found
    versions = [v for v, _ in found]
    assert versions == sorted(set(versions)) and versions[0] == 1, versions
    assert all(sql.strip() for _, sql in found)
    # The outbox column: an ALTER the checker must see as additive.
    assert any(re.match(r"\s*ALTER TABLE jobs ADD COLUMN notify_since_ms", sql) for _, sql in found)


# Reviewed exceptions: version -> why the previous code lives with it. Only MODIFY that keeps a
# column's type and NULLability may be excepted.
REVIEWED = {
    5: "MODIFY owner/idempotency_key: only the collation changes (utf8mb4_bin, callers compared byte "
       "for byte); same VARCHAR(191), same NULLability, read and written alike by every version",
}


def test_migrations_are_additive():
    bad = {v: violations(sql) for v, sql in rust_migrations(MYSQL_RS.read_text())}
    bad = {v: why for v, why in bad.items() if why and v not in REVIEWED}
    assert not bad, f"migrations that the previous functions or workers could not live with: {bad}"


def test_reviewed_exceptions_are_only_collation_changes():
    found = dict(rust_migrations(MYSQL_RS.read_text()))
    for version in REVIEWED:
        why = violations(found[version])
        assert why and all(w.startswith("MODIFY") for w in why), (version, why)
        sql = " ".join(found[version].split())
        clauses = re.findall(r"MODIFY\s+(?:COLUMN\s+)?(.*?)(?=,\s*MODIFY|$)", sql)
        assert len(clauses) == sql.count("MODIFY") >= 1, clauses
        for clause in clauses:
            assert re.fullmatch(r"\w+ VARCHAR\(191\) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin (NOT )?NULL", clause), clause


# ------------------------------------------------------------------ the checker itself
@pytest.mark.parametrize("sql", [
    "ALTER TABLE jobs DROP COLUMN error",
    "ALTER TABLE jobs DROP KEY ix_jobs_notify",
    "DROP TABLE job_results",
    "ALTER TABLE jobs RENAME COLUMN error TO failure",
    "RENAME TABLE jobs TO jobs_v2",
    "ALTER TABLE jobs MODIFY error VARCHAR(255) NULL",
    "ALTER TABLE jobs MODIFY COLUMN error VARCHAR(255) NULL",
    "ALTER TABLE jobs CHANGE error failure TEXT NULL",
    "ALTER TABLE jobs CHANGE COLUMN error error MEDIUMTEXT",
    "TRUNCATE TABLE webhook_deliveries",
    "ALTER TABLE jobs ADD COLUMN tenant VARCHAR(64) NOT NULL",
    "ALTER TABLE jobs ADD tenant VARCHAR(64) NOT NULL, ADD KEY ix_tenant (tenant)",
    "ALTER TABLE jobs ADD KEY ix_a (a), ADD COLUMN b INT NOT NULL AFTER a",
    "ALTER TABLE jobs ADD COLUMN (a INT NULL, b INT NOT NULL)",
    "alter table jobs\n  add column   tenant varchar(64)   not   null",
    "CREATE TABLE t (id INT); ALTER TABLE jobs DROP COLUMN error",
])
def test_checker_refuses(sql):
    assert violations(sql), sql


@pytest.mark.parametrize("sql", [
    "ALTER TABLE jobs ADD COLUMN notify_since_ms BIGINT NULL, ADD KEY ix_jobs_notify (notify_since_ms)",
    "ALTER TABLE jobs ADD COLUMN tenant VARCHAR(64) NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN n INT UNSIGNED NOT NULL DEFAULT 0 AFTER attempts",
    "ALTER TABLE jobs ADD COLUMN note TEXT",
    "ALTER TABLE jobs ADD UNIQUE KEY uq_x (owner, id)",
    "ALTER TABLE jobs ADD COLUMN status_note VARCHAR(32) NULL DEFAULT 'drop me'  -- DROP in a comment",
    "CREATE TABLE IF NOT EXISTS t (id BIGINT NOT NULL PRIMARY KEY, at_ms BIGINT NOT NULL)",
    "CREATE INDEX ix_jobs_owner ON jobs (owner)",
])
def test_checker_accepts(sql):
    assert violations(sql) == [], sql


def test_reader_handles_rust_literals():
    src = '''const MIGRATIONS: &[(u32, &str)] = &[
        (1, r"CREATE TABLE a (x INT)"),
        // a comment ("quoted", with a paren)
        (2, r#"ALTER TABLE a ADD COLUMN y TEXT NULL DEFAULT "q""#),
        (
            3,
            "ALTER TABLE a \\
             DROP COLUMN x",
        ),
    ];'''
    assert rust_migrations(src) == [(1, "CREATE TABLE a (x INT)"),
                                    (2, 'ALTER TABLE a ADD COLUMN y TEXT NULL DEFAULT "q"'),
                                    (3, "ALTER TABLE a DROP COLUMN x")]
    assert violations(rust_migrations(src)[2][1])
