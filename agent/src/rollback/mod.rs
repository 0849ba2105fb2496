//! Transactional apply and rollback around the persisted journal.

pub mod apply;
pub mod journal;
