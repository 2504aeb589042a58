-- name: lock_patient
-- Serialises writers of one patient's graph until the transaction ends.
select pg_advisory_xact_lock(7242, hashtext(%(patient_key)s));

-- name: upsert_patient
-- Takes no row lock on an existing patient: the advisory lock above is what serialises writers.
with inserted as (
    insert into patients (patient_key) values (%(patient_key)s)
    on conflict (patient_key) do nothing
    returning id
)
select id from inserted
union all
select id from patients where patient_key = %(patient_key)s
limit 1;

-- name: upsert_study
insert into studies (patient_id, study_instance_uid, study_date)
values (%(patient_id)s, %(study_instance_uid)s, %(study_date)s)
on conflict (study_instance_uid) do update
   set study_date = coalesce(excluded.study_date, studies.study_date), updated_at = now()
returning id, patient_id;

-- name: upsert_series
insert into series (study_id, series_instance_uid, model_versions)
values (%(study_id)s, %(series_instance_uid)s, %(model_versions)s)
on conflict (series_instance_uid) do update
   set study_id = excluded.study_id, model_versions = excluded.model_versions, updated_at = now()
returning id;

-- name: study_lesions_before_replace
select l.id, l.track_id, e.embedding::real[] as embedding
  from lesions l left join embeddings e on e.lesion_id = l.id
 where l.study_id = %(study_id)s and l.track_id is not null;

-- name: delete_study_lesions
delete from lesions where study_id = %(study_id)s;

-- name: insert_lesion
insert into lesions (patient_id, study_id, series_id, lesion_index, key_slice, box,
                     long_axis_mm, short_axis_mm, long_axis_endpoints, short_axis_endpoints,
                     volume_mm3, lesion_type, site, body_part_score, score, center_patient,
                     model_versions, flags)
values (%(patient_id)s, %(study_id)s, %(series_id)s, %(lesion_index)s, %(key_slice)s, %(box)s,
        %(long_axis_mm)s, %(short_axis_mm)s, %(long_axis_endpoints)s, %(short_axis_endpoints)s,
        %(volume_mm3)s, %(lesion_type)s, %(site)s, %(body_part_score)s, %(score)s,
        %(center_patient)s, %(model_versions)s, %(flags)s)
returning id;

-- name: insert_embedding
insert into embeddings (lesion_id, patient_id, lesion_type, site, long_axis_mm, model_version, embedding)
values (%(lesion_id)s, %(patient_id)s, %(lesion_type)s, %(site)s, %(long_axis_mm)s,
        %(model_version)s, %(embedding)s::vector);

-- name: patient_lesions
-- Every lesion of a patient with what matching and RECIST need, studies in time order.
select l.id, l.study_id, l.track_id, l.flags, l.long_axis_mm, l.short_axis_mm, l.lesion_type,
       l.site, e.embedding::real[] as embedding
  from lesions l left join embeddings e on e.lesion_id = l.id
 where l.patient_id = %(patient_id)s
 order by l.id;

-- name: patient_studies
select id, study_instance_uid, study_date
  from studies where patient_id = %(patient_id)s
 order by study_date nulls last, received_at, id;

-- name: patient_tracks
select id, tracking_uid, tracking_id, created_at, retired_at
  from tracks where patient_id = %(patient_id)s order by id;

-- name: insert_track
insert into tracks (patient_id, tracking_uid, tracking_id)
values (%(patient_id)s, %(tracking_uid)s, %(tracking_id)s)
returning id;

-- name: set_lesion_tracks
update lesions l set track_id = v.track_id
  from unnest(%(lesion_ids)s::bigint[], %(track_ids)s::bigint[]) as v (lesion_id, track_id)
 where l.id = v.lesion_id and l.track_id is distinct from v.track_id;

-- name: retire_empty_tracks
update tracks t set retired_at = now()
 where t.patient_id = %(patient_id)s and t.retired_at is null
   and not exists (select 1 from lesions l where l.track_id = t.id);

-- name: set_time_points
update studies s set time_point = v.time_point, time_index = v.time_index
  from unnest(%(study_ids)s::bigint[], %(time_points)s::text[], %(time_indices)s::int[])
       as v (study_id, time_point, time_index)
 where s.id = v.study_id;

-- name: upsert_response
insert into responses (study_id, category, sum_of_diameters_mm, baseline_sum_mm, nadir_sum_mm,
                       change_from_baseline_pct, change_from_nadir_pct, new_lesions,
                       target_tracking_uids, baseline_study_uid)
values (%(study_id)s, %(category)s, %(sum_of_diameters_mm)s, %(baseline_sum_mm)s,
        %(nadir_sum_mm)s, %(change_from_baseline_pct)s, %(change_from_nadir_pct)s,
        %(new_lesions)s, %(target_tracking_uids)s, %(baseline_study_uid)s)
on conflict (study_id) do update
   set category = excluded.category, sum_of_diameters_mm = excluded.sum_of_diameters_mm,
       baseline_sum_mm = excluded.baseline_sum_mm, nadir_sum_mm = excluded.nadir_sum_mm,
       change_from_baseline_pct = excluded.change_from_baseline_pct,
       change_from_nadir_pct = excluded.change_from_nadir_pct,
       new_lesions = excluded.new_lesions, target_tracking_uids = excluded.target_tracking_uids,
       baseline_study_uid = excluded.baseline_study_uid, updated_at = now();

-- name: patient_id_by_key
select id from patients where patient_key = %(patient_key)s;

-- name: study_patient
select s.id, s.patient_id, p.patient_key
  from studies s join patients p on p.id = s.patient_id
 where s.study_instance_uid = %(study_instance_uid)s;

-- name: lesion_rows
-- Lesions with their study, track and time point; filter by patient, study or lesion id.
select l.id, l.lesion_index, l.key_slice, l.box, l.long_axis_mm, l.short_axis_mm,
       l.long_axis_endpoints, l.short_axis_endpoints, l.volume_mm3, l.lesion_type, l.site,
       l.body_part_score, l.score, l.center_patient, l.model_versions, l.flags,
       s.study_instance_uid, s.study_date, s.time_point, s.time_index,
       se.series_instance_uid, t.tracking_uid, t.tracking_id, p.patient_key,
       (e.lesion_id is not null) as has_embedding
  from lesions l
  join studies s on s.id = l.study_id
  join series se on se.id = l.series_id
  join patients p on p.id = l.patient_id
  left join tracks t on t.id = l.track_id
  left join embeddings e on e.lesion_id = l.id
 where (%(patient_id)s::bigint is null or l.patient_id = %(patient_id)s)
   and (%(study_instance_uid)s::text is null or s.study_instance_uid = %(study_instance_uid)s)
   and (%(lesion_id)s::bigint is null or l.id = %(lesion_id)s)
 order by s.time_index nulls last, s.id, l.lesion_index;

-- name: patient_responses
select s.study_instance_uid, s.study_date, s.time_point, s.time_index, r.*
  from responses r join studies s on s.id = r.study_id
 where s.patient_id = %(patient_id)s
 order by s.time_index;

-- name: study_response
select s.time_point, r.*
  from studies s left join responses r on r.study_id = s.id
 where s.study_instance_uid = %(study_instance_uid)s;

-- name: lesion_embedding
select e.embedding::text as embedding, e.patient_id
  from embeddings e where e.lesion_id = %(lesion_id)s;

-- name: similar_hnsw
-- Approximate k nearest lesions of other patients (HNSW); filters are applied to the scan.
select e.lesion_id, e.embedding <-> %(query)s::vector as distance
  from embeddings e
 where e.patient_id is distinct from %(exclude_patient_id)s
   and (%(lesion_type)s::text is null or e.lesion_type = %(lesion_type)s)
   and (%(site)s::text is null or e.site = %(site)s)
   and (%(min_mm)s::float8 is null or e.long_axis_mm >= %(min_mm)s)
   and (%(max_mm)s::float8 is null or e.long_axis_mm <= %(max_mm)s)
 order by e.embedding <-> %(query)s::vector
 limit %(k)s;

-- name: similar_exact
-- The same, by exact search (sequential scan): the fallback and the benchmark's baseline.
select e.lesion_id, e.embedding <-> %(query)s::vector as distance
  from embeddings e
 where e.patient_id is distinct from %(exclude_patient_id)s
   and (%(lesion_type)s::text is null or e.lesion_type = %(lesion_type)s)
   and (%(site)s::text is null or e.site = %(site)s)
   and (%(min_mm)s::float8 is null or e.long_axis_mm >= %(min_mm)s)
   and (%(max_mm)s::float8 is null or e.long_axis_mm <= %(max_mm)s)
 order by (e.embedding <-> %(query)s::vector) + 0
 limit %(k)s;

-- name: set_ef_search
select set_config('hnsw.ef_search', %(ef_search)s, true);

-- name: drop_embedding_index
-- Bulk loads: drop the HNSW index, COPY, then build it once (much faster than row by row).
drop index if exists embeddings_hnsw;

-- name: create_embedding_index
-- The same definition as migration 010.
create index if not exists embeddings_hnsw on embeddings using hnsw (embedding vector_l2_ops);
