-- One durable job per Orthanc study. A study sent again re-queues its row (generation + 1).
create table if not exists jobs (
    id               bigserial primary key,
    orthanc_study_id text not null unique,
    study_instance_uid text,
    state            text not null default 'queued'
                     check (state in ('queued', 'running', 'done', 'failed', 'skipped')),
    generation       integer not null default 1,
    attempts         integer not null default 0,
    max_attempts     integer not null default 3,
    run_after        timestamptz not null default now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    reason           text,
    timings          jsonb not null default '{}'::jsonb,
    result           jsonb not null default '{}'::jsonb,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

create index if not exists jobs_ready_idx on jobs (run_after, id) where state = 'queued';
create index if not exists jobs_lease_idx on jobs (lease_expires_at) where state = 'running';

create table if not exists job_events (
    id       bigserial primary key,
    job_id   bigint not null references jobs (id) on delete cascade,
    at       timestamptz not null default now(),
    state    text not null,
    message  text
);
create index if not exists job_events_job_idx on job_events (job_id, id);
