-- name: enqueue
-- A new study gets a job; a study sent again is queued again (never duplicated).
insert into jobs (orthanc_study_id, study_instance_uid, max_attempts)
values (%(orthanc_study_id)s, %(study_instance_uid)s, %(max_attempts)s)
on conflict (orthanc_study_id) do update
   set state = 'queued',
       generation = jobs.generation + 1,
       attempts = 0,
       max_attempts = excluded.max_attempts,
       study_instance_uid = coalesce(excluded.study_instance_uid, jobs.study_instance_uid),
       run_after = now(),
       reason = null,
       updated_at = now()
 where jobs.results_last_update is distinct from %(last_update)s
    or %(last_update)s::text is null
returning id, generation, (xmax = 0) as created;

-- name: fail_exhausted
-- Jobs whose worker died once too often: failed with the reason, visible.
update jobs
   set state = 'failed',
       reason = coalesce(reason || '; ', '') || 'worker lease expired ' || attempts || ' times (worker died or hung)',
       lease_owner = null, lease_expires_at = null, finished_at = now(), updated_at = now()
 where state = 'running' and lease_expires_at < now() and attempts >= max_attempts
returning id;

-- name: claim
-- Take the next ready job (or one whose lease expired) with a lease; SKIP LOCKED lets many workers share the queue.
update jobs
   set state = 'running',
       attempts = attempts + 1,
       lease_owner = %(worker)s,
       lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
       started_at = now(),
       updated_at = now()
 where id = (
       select id from jobs
        where (state = 'queued' and run_after <= now())
           or (state = 'running' and lease_expires_at < now() and attempts < max_attempts)
        order by run_after, id
        for update skip locked
        limit 1)
returning *;

-- name: heartbeat
update jobs
   set lease_expires_at = now() + make_interval(secs => %(lease_seconds)s), updated_at = now()
 where id = %(id)s and lease_owner = %(worker)s and state = 'running'
returning id;

-- name: finish
-- Ends a job unless it was re-queued meanwhile (a newer generation wins).
update jobs
   set state = %(state)s, reason = %(reason)s, timings = %(timings)s, result = %(result)s,
       lease_owner = null, lease_expires_at = null, finished_at = now(), updated_at = now()
 where id = %(id)s and lease_owner = %(worker)s and generation = %(generation)s and state = 'running'
returning id;

-- name: retry_later
update jobs
   set state = 'queued', reason = %(reason)s, run_after = now() + make_interval(secs => %(delay_seconds)s),
       lease_owner = null, lease_expires_at = null, updated_at = now()
 where id = %(id)s and lease_owner = %(worker)s and generation = %(generation)s and state = 'running'
returning id;

-- name: add_event
insert into job_events (job_id, state, message) values (%(job_id)s, %(state)s, %(message)s);

-- name: get
select * from jobs where id = %(id)s;

-- name: get_by_study
select * from jobs where orthanc_study_id = %(key)s or study_instance_uid = %(key)s order by id desc limit 1;

-- name: events
select at, state, message from job_events where job_id = %(id)s order by id;

-- name: list
select * from jobs
 where (%(state)s::text is null or state = %(state)s)
 order by updated_at desc, id desc
 limit %(limit)s;

-- name: counts
select state, count(*)::int as n from jobs group by state;

-- name: last_errors
select id, study_instance_uid, state, reason, updated_at from jobs
 where reason is not null and state in ('failed', 'skipped', 'queued')
 order by updated_at desc limit %(limit)s;

-- name: requeue
update jobs
   set state = 'queued', generation = generation + 1, attempts = 0, run_after = now(), reason = null,
       lease_owner = null, lease_expires_at = null, updated_at = now()
 where id = %(id)s
returning id, generation;

-- name: mark_results_stored
update jobs set results_last_update = %(last_update)s, updated_at = now() where id = %(id)s;

-- name: enqueue_if_absent
-- Start-up sweep: a study Orthanc holds but the queue never saw (database was down) gets a job.
insert into jobs (orthanc_study_id, study_instance_uid, max_attempts)
values (%(orthanc_study_id)s, %(study_instance_uid)s, %(max_attempts)s)
on conflict (orthanc_study_id) do nothing
returning id;
