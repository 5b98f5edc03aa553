"""The durable preference store (SQLite), its export and import, and segment serialisation."""
