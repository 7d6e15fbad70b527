//! [`Db`]: a connection together with the sealer of its database, which is what every
//! [`super::Store::write`] and [`super::Store::read`] closure gets. It derefs to the
//! `rusqlite::Connection`, so table functions without secrets take `&Connection` as before;
//! those that read or write a sealed column take `&Db` and cannot be called without the key.

use std::ops::Deref;
use std::sync::Arc;

use rusqlite::{Connection, Row};
use zeroize::Zeroizing;

use super::error::Result;
use super::sealing::{KeyPart, SealedColumn, Sealer};
use super::{SecretBlob, SecretKey};

/// A connection and its database's sealer.
pub struct Db {
    conn: Connection,
    sealer: Arc<Sealer>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("sealer", &self.sealer)
            .finish_non_exhaustive()
    }
}

impl Deref for Db {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Db {
    /// Pairs `conn` with `sealer`.
    pub fn new(conn: Connection, sealer: Arc<Sealer>) -> Self {
        Self { conn, sealer }
    }

    /// The sealer.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Seals a value of `column` for the row whose key is `key`.
    pub fn seal(&self, column: &SealedColumn, key: &[KeyPart<'_>], plain: &[u8]) -> Vec<u8> {
        self.sealer.seal(column, key, plain)
    }

    /// Opens a sealed value of `column` in the row whose key is `key`.
    pub fn open(
        &self,
        column: &SealedColumn,
        key: &[KeyPart<'_>],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        Ok(self.sealer.open(column, key, sealed)?)
    }

    /// [`Db::open`] of a 32-byte secret.
    pub fn open32(
        &self,
        column: &SealedColumn,
        key: &[KeyPart<'_>],
        sealed: &[u8],
    ) -> Result<SecretKey> {
        self.sealer.open32(column, key, sealed)
    }

    /// The 32-byte secret sealed in `column` of `row`, whose key is `key`.
    pub(crate) fn secret32(
        &self,
        row: &Row<'_>,
        column: &SealedColumn,
        key: &[KeyPart<'_>],
    ) -> Result<SecretKey> {
        let sealed = super::types::blob(row, column.table, column.column)?;
        self.open32(column, key, sealed)
    }

    /// The variable-length secret sealed in `column` of `row`, whose key is `key`.
    pub(crate) fn secret_blob(
        &self,
        row: &Row<'_>,
        column: &SealedColumn,
        key: &[KeyPart<'_>],
    ) -> Result<SecretBlob> {
        let sealed = super::types::blob(row, column.table, column.column)?;
        Ok(SecretBlob::from_zeroizing(self.open(column, key, sealed)?))
    }
}
