from alembic import context
from sqlalchemy import create_engine, pool

from common.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    assert url is not None
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        # One migrator at a time, even if two supervisors race on one database.
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7041990)")
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
