//! Written next: see the issue.
