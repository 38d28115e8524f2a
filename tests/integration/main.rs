//! Integration tests against LocalStack + MariaDB.
