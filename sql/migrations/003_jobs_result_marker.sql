-- The study's Orthanc LastUpdate right after the node stored its own results into it, so the
-- STABLE_STUDY that those results cause does not queue the study again.
alter table jobs add column if not exists results_last_update text;
