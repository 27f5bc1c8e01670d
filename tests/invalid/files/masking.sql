-- Masking SQL used by the invalid-description corpus (content is never run by `validate`).
UPDATE customers SET email = 'customer-' || id || '@example.invalid';
