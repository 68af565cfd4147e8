//! [`OwnedMysqlRow`]: a sync MariaDB row copied out of its statement, so a read can move to
//! another server and still hand its rows back. diesel's own `MysqlRow` reads its column names
//! from the prepared statement, which an uncached statement (`sql_query`) closes when its
//! iterator is dropped.

use std::ops::Range;
use std::sync::Arc;

use diesel::backend::Backend;
use diesel::mysql::{Mysql, MysqlType, MysqlValue};
use diesel::row::{Field, PartialRow, Row, RowIndex, RowSealed};

/// A row whose names and values it owns.
#[derive(Debug, Clone)]
pub struct OwnedMysqlRow {
    /// Shared by the rows of one statement.
    names: Arc<[Option<String>]>,
    values: Vec<Option<(Vec<u8>, MysqlType)>>,
}

impl OwnedMysqlRow {
    /// A copy of `row`; `names` are its statement's (see [`OwnedMysqlRow::names_of`]).
    pub(super) fn copy<'a, R: Row<'a, Mysql>>(row: &R, names: Arc<[Option<String>]>) -> Self {
        let values = (0..row.field_count())
            .map(|i| {
                let field = row.get(i)?;
                let value = field.value()?;
                Some((value.as_bytes().to_vec(), value.value_type()))
            })
            .collect();
        OwnedMysqlRow { names, values }
    }

    /// The column names of `row`'s statement.
    pub(super) fn names_of<'a, R: Row<'a, Mysql>>(row: &R) -> Arc<[Option<String>]> {
        (0..row.field_count())
            .map(|i| row.get(i).and_then(|f| f.field_name().map(str::to_owned)))
            .collect()
    }
}

impl RowSealed for OwnedMysqlRow {}

impl RowIndex<usize> for OwnedMysqlRow {
    fn idx(&self, idx: usize) -> Option<usize> {
        (idx < self.values.len()).then_some(idx)
    }
}

impl<'n> RowIndex<&'n str> for OwnedMysqlRow {
    fn idx(&self, idx: &'n str) -> Option<usize> {
        self.names
            .iter()
            .position(|name| name.as_deref() == Some(idx))
    }
}

impl<'a> Row<'a, Mysql> for OwnedMysqlRow {
    type Field<'f>
        = OwnedMysqlField<'f>
    where
        'a: 'f,
        Self: 'f;
    type InnerPartialRow = Self;

    fn field_count(&self) -> usize {
        self.values.len()
    }

    fn get<'b, I>(&'b self, idx: I) -> Option<Self::Field<'b>>
    where
        'a: 'b,
        Self: RowIndex<I>,
    {
        let idx = self.idx(idx)?;
        Some(OwnedMysqlField { row: self, idx })
    }

    fn partial_row(&self, range: Range<usize>) -> PartialRow<'_, Self::InnerPartialRow> {
        PartialRow::new(self, range)
    }
}

/// A field of an [`OwnedMysqlRow`].
#[derive(Debug)]
pub struct OwnedMysqlField<'a> {
    row: &'a OwnedMysqlRow,
    idx: usize,
}

impl<'a> Field<'a, Mysql> for OwnedMysqlField<'a> {
    fn field_name(&self) -> Option<&str> {
        self.row.names.get(self.idx)?.as_deref()
    }

    fn value(&self) -> Option<<Mysql as Backend>::RawValue<'_>> {
        let (raw, tpe) = self.row.values.get(self.idx)?.as_ref()?;
        Some(MysqlValue::new(raw, *tpe))
    }
}
