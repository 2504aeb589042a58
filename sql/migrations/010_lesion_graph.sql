-- The lesion graph: patients (pseudonymous key only), studies, series, lesions, embeddings,
-- longitudinal tracks and RECIST responses. Written so it can run on a database that
-- already holds data (everything "if not exists"); later changes go in 011..019.

create table if not exists patients (
    id bigserial primary key,
    patient_key text not null unique,          -- HMAC-SHA256 of issuer + Patient ID, never the ID
    created_at timestamptz not null default now()
);

create table if not exists studies (
    id bigserial primary key,
    patient_id bigint not null references patients (id) on delete cascade,
    study_instance_uid text not null unique,
    study_date date,
    time_point text,                           -- 'baseline', 'follow-up 1', ... re-derived
    time_index integer,
    received_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index if not exists studies_patient on studies (patient_id);

create table if not exists series (
    id bigserial primary key,
    study_id bigint not null references studies (id) on delete cascade,
    series_instance_uid text not null unique,
    model_versions jsonb not null default '{}'::jsonb,
    updated_at timestamptz not null default now()
);

create table if not exists tracks (
    id bigserial primary key,
    patient_id bigint not null references patients (id) on delete cascade,
    tracking_uid text not null unique,
    tracking_id text not null,                 -- human readable, 'L1', 'L2', ... per patient
    created_at timestamptz not null default now(),
    retired_at timestamptz,                    -- no lesion left in it; the UID is never reused
    unique (patient_id, tracking_id)
);
create index if not exists tracks_patient on tracks (patient_id);

create table if not exists lesions (
    id bigserial primary key,
    patient_id bigint not null references patients (id) on delete cascade,
    study_id bigint not null references studies (id) on delete cascade,
    series_id bigint not null references series (id) on delete cascade,
    lesion_index integer not null,
    key_slice integer not null,
    box double precision[] not null check (array_length(box, 1) = 4),   -- col0, row0, col1, row1
    long_axis_mm double precision,
    short_axis_mm double precision,
    long_axis_endpoints double precision[],    -- c0, r0, c1, r1 on the key slice
    short_axis_endpoints double precision[],
    volume_mm3 double precision,
    lesion_type text not null,
    site text,
    body_part_score double precision,
    score double precision not null,
    center_patient double precision[],
    model_versions jsonb not null default '{}'::jsonb,
    track_id bigint references tracks (id) on delete set null,
    flags text[] not null default '{}',        -- e.g. 'no_embedding': stored, not matched
    created_at timestamptz not null default now(),
    unique (series_id, lesion_index)
);
create index if not exists lesions_patient on lesions (patient_id);
create index if not exists lesions_study on lesions (study_id);
create index if not exists lesions_track on lesions (track_id);

-- Filter columns are copied here so that the HNSW scan filters without a join.
create table if not exists embeddings (
    lesion_id bigint primary key references lesions (id) on delete cascade,
    patient_id bigint not null references patients (id) on delete cascade,
    lesion_type text not null,
    site text,
    long_axis_mm double precision,
    model_version text,
    embedding vector(64) not null
);
create index if not exists embeddings_hnsw on embeddings using hnsw (embedding vector_l2_ops);

create table if not exists responses (
    study_id bigint primary key references studies (id) on delete cascade,
    category text not null,
    sum_of_diameters_mm double precision not null,
    baseline_sum_mm double precision not null,
    nadir_sum_mm double precision not null,
    change_from_baseline_pct double precision,
    change_from_nadir_pct double precision,
    new_lesions boolean not null,
    target_tracking_uids text[] not null default '{}',
    baseline_study_uid text,
    updated_at timestamptz not null default now()
);

-- Track members per time point.
create or replace view track_members as
select t.patient_id, t.id as track_id, t.tracking_uid, t.tracking_id,
       s.study_instance_uid, s.study_date, s.time_point, s.time_index, l.id as lesion_id
  from tracks t
  join lesions l on l.track_id = t.id
  join studies s on s.id = l.study_id;
