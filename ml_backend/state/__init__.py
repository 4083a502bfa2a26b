"""What every process sees: the store on SQLite or PostgreSQL with its migrations, a project's files
under MODEL_DIR, the labeled set built from the store, heads and their versions, the learning curve."""
