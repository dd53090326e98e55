"""Study database URLs: the default SQLite file, the PostgreSQL driver, passwords hidden."""

from __future__ import annotations

from pathlib import Path


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file ``path`` (made absolute)."""
    return f"sqlite:///{Path(path).resolve()}"


def driver_url(url: str) -> str:
    """``url`` with an explicit PostgreSQL driver: psycopg2 unless psycopg (3) is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; vitquant ships psycopg2-binary.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util

        driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
        return f"postgresql+{driver}://" + url.split("://", 1)[1]
    return url


def redact(url: str) -> str:
    """The URL without a password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def sqlite_path(url: str) -> Path | None:
    """The file of an ``sqlite:///`` URL, or None (in memory, or not a path)."""
    rest = url.split("://", 1)[1]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:]) if rest.startswith("/") else None
