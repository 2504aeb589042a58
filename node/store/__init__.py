"""All Postgres access of the node: the connector (db), the job queue (jobs), the lesion graph (lesions)."""
