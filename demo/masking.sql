-- Mask personal data on the restored copy, before any release or suite touches it.
--
-- Emails become md5(lower(email)) || '@example.invalid'. Hashing the lower-cased
-- address keeps emails that differ only by letter case equal after masking, so a
-- migration that trips over them in production (release v3) trips on the copy too.
-- Names become 'Customer <id>'.
--
-- Safe to run twice: already masked rows are left alone. Needs only the v1 schema.
\set ON_ERROR_STOP on

begin;

update customers
set email = md5(lower(email)) || '@example.invalid'
where email not like '%@example.invalid';

update customers
set name = 'Customer ' || id
where name is distinct from 'Customer ' || id;

commit;
