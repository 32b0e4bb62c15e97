"""The one Alembic history. `upgrade(url)` brings a database to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str, revision: str = "heads") -> None:
    """Apply every migration. Each agent's tables are a branch off the base revision
    (`branch_labels=(agent,)`), so agents' histories do not step on each other."""
    command.upgrade(alembic_config(url), revision)


def heads() -> set[str]:
    """What `alembic_version` holds once every migration is applied: the script's heads,
    less those another revision `depends_on` (alembic folds a dependency into the
    revision that depends on it, as a partial merge)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("postgresql://"))
    depended: set[str] = set()
    for revision in script.walk_revisions():
        found = revision.dependencies or ()
        depended.update((found,) if isinstance(found, str) else found)
    return set(script.get_heads()) - depended
