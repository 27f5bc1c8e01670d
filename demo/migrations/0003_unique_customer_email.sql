-- 0003_unique_customer_email: one account per email address, ignoring letter case.
-- Works on an empty database; fails on production, where some customers signed up
-- twice with emails that differ only by case. That is what a rehearsal is for.

CREATE UNIQUE INDEX customers_email_lower_key ON customers (lower(email));
