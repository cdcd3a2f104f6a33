"""The trigger that makes a table append-only (an UPDATE is refused by the database itself), per dialect."""
from alembic import op


def refuse_updates(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE OR REPLACE FUNCTION torax_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   "BEGIN RAISE EXCEPTION 'Torax % rows are append-only', TG_TABLE_NAME; END $$")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE ON {table} FOR EACH ROW "
                   "EXECUTE FUNCTION torax_append_only()")
    else:
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE ON {table} "
                   f"BEGIN SELECT RAISE(ABORT, 'Torax {table} rows are append-only'); END")


def drop_refusal(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only")
