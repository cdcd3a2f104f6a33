"""Alembic's entry point for the record's migrations. Run only through model.store.db (`Store.open` upgrades a
database that is behind), which passes its own connection: there is no alembic.ini to point anywhere else."""
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
