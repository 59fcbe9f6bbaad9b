"""Alembic's environment for the acceptance tests' migration project: the URL comes
from the Config the test builds (sqlalchemy.url), online mode only."""

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config

with engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                        poolclass=pool.NullPool).connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
