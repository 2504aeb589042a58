-- The lesion embedder (triton_models lesion_embedder, output "embedding") emits 32-d vectors.
-- Embeddings of another dimension come from another embedder and are not comparable: their
-- lesions keep everything else and are flagged 'no_embedding' (stored, not matched).
update lesions set flags = array_append(flags, 'no_embedding')
 where id in (select lesion_id from embeddings) and not ('no_embedding' = any (flags));
drop index if exists embeddings_hnsw;
delete from embeddings;
alter table embeddings alter column embedding type vector(32);
create index if not exists embeddings_hnsw on embeddings using hnsw (embedding vector_l2_ops);
