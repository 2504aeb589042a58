-- pgvector for lesion embeddings.
create extension if not exists vector;
