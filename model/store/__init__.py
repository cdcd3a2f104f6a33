"""A department's memory: every result recorded (append-only), the reader's confirmations, and the monitoring
built on them.

    location.py  where the record lives: $TORAX_DB_URL, else SQLite in the state folder; the spool beside it
    schema.py    the tables (SQLAlchemy Core); migrations/ the Alembic revisions that make them
    db.py        Store: open (refusing a corrupt or foreign SQLite file), upgrade, append, confirm, query, retain
    spool.py     records kept on local disk while the database is unreachable, written when it is back
    recorder.py  `record(result, bundle, channel=...)`: the one call every channel makes; never blocks a reader
    confirmations.py  labels in (one, or a CSV in bulk), each row checked
    monitor.py   volume, guard rates, drift (PSI, KS) and live performance, with alarms (numpy + scipy only)
    sample.py    the record as a labelled sample: what `site fit --from-records` fits on

No pixels and no patient names, birth dates or file names are ever recorded: the record's fields are an
allowlist (recorder.py). Never imports Streamlit, TensorFlow or training/.
"""
