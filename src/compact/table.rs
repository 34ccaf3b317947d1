//! One Parquet file from committed envelope lines.
//!
//! Owns the Parquet encoding: `received_at` (UTC timestamp, ms),
//! `partition` and `offset`, then the plan's event columns, then `_extra`
//! (JSON). Values are cut from the segment's bytes without a copy where the
//! text is the value (plain strings, JSON text); rows are buffered one row
//! group at a time, so memory is bounded by `row_group_rows`. Where the
//! rows come from and where the file goes belong to the caller.

use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{
    Compression, Encoding, LogicalType, Repetition, TimeUnit, Type as Physical, ZstdLevel,
};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::schema::types::{ColumnPath, Type};

use super::columns::{fields, integer, Kind, Plan, EXTRA};

/// Table encoding failures (a bug or a resource limit, never bad input).
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Parquet settings of a table.
#[derive(Debug, Clone, Copy)]
pub struct TableSettings {
    pub row_group_rows: usize,
    pub zstd_level: i32,
}

/// One committed event and where it sits in the log.
#[derive(Debug, Clone)]
pub struct Row {
    pub partition: u32,
    pub offset: u64,
    /// Receive time, milliseconds since the epoch.
    pub received_at: i64,
    /// The event's bytes as sent (a slice of its segment).
    pub event: Bytes,
}

impl Row {
    /// The row of an envelope line at (`partition`, `offset`).
    pub fn of_line(partition: u32, offset: u64, line: &Bytes) -> Option<Row> {
        let (received_at, event) = envelope(line)?;
        Some(Row {
            partition,
            offset,
            received_at,
            event,
        })
    }
}

/// A whole Parquet file of `rows`: columns from `schema` when given, else
/// inferred from the rows.
pub fn file(
    rows: &[Row],
    schema: Option<&serde_json::Value>,
    max_columns: usize,
    settings: TableSettings,
) -> Result<Bytes, TableError> {
    let plan = match schema {
        Some(schema) => Plan::from_schema(schema, max_columns),
        None => Plan::infer(rows.iter().map(|r| r.event.as_ref()), max_columns),
    };
    let mut table = TableWriter::new(plan, settings)?;
    for row in rows {
        table.push(row)?;
    }
    table.finish()
}

const PREFIX: &[u8] = b"{\"received_at\":\"";
const MIDDLE: &[u8] = b"\",\"event\":";
/// Length of `PREFIX` + a 24-byte time + `MIDDLE`.
const EVENT_START: usize = 16 + 24 + 10;

/// The receive time (ms) and the event bytes of an envelope line.
pub fn envelope(line: &Bytes) -> Option<(i64, Bytes)> {
    let ok = line.len() > EVENT_START
        && line.starts_with(PREFIX)
        && line[40..EVENT_START] == *MIDDLE
        && line.ends_with(b"}");
    if !ok {
        return None;
    }
    let at = std::str::from_utf8(&line[16..40]).ok()?;
    let millis = crate::log::window::millis(at)?;
    Some((millis, line.slice(EVENT_START..line.len() - 1)))
}

enum Values {
    Bytes(Vec<ByteArray>),
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// One optional column's pending row group: values and definition levels.
struct Pending {
    kind: Kind,
    values: Values,
    defs: Vec<i16>,
}

impl Pending {
    fn new(kind: Kind) -> Self {
        let values = match kind {
            Kind::String | Kind::Json => Values::Bytes(Vec::new()),
            Kind::Boolean => Values::Bool(Vec::new()),
            Kind::Integer => Values::Int(Vec::new()),
            Kind::Number => Values::Float(Vec::new()),
        };
        Pending {
            kind,
            values,
            defs: Vec::new(),
        }
    }

    /// Add `raw` (a value's JSON text, a slice of `event`) if it fits this
    /// column's type; `false` leaves the column untouched.
    fn push(&mut self, event: &Bytes, raw: &[u8]) -> bool {
        let pushed = match (&mut self.values, self.kind) {
            (Values::Bytes(v), Kind::Json) => {
                v.push(ByteArray::from(event.slice_ref(raw)));
                true
            }
            (Values::Bytes(v), _) => match string_value(event, raw) {
                Some(s) => {
                    v.push(ByteArray::from(s));
                    true
                }
                None => false,
            },
            (Values::Bool(v), _) => match raw {
                b"true" | b"false" => {
                    v.push(raw == b"true");
                    true
                }
                _ => false,
            },
            (Values::Int(v), _) => match integer(raw) {
                Some(i) => {
                    v.push(i);
                    true
                }
                None => false,
            },
            (Values::Float(v), _) => match float(raw) {
                Some(f) => {
                    v.push(f);
                    true
                }
                _ => false,
            },
        };
        if pushed {
            self.defs.push(1);
        }
        pushed
    }

    fn push_null(&mut self) {
        self.defs.push(0);
    }

    fn write(&mut self, column: &mut SerializedColumnWriter<'_>) -> Result<(), TableError> {
        let defs = Some(self.defs.as_slice());
        match &mut self.values {
            Values::Bytes(v) => column.typed::<ByteArrayType>().write_batch(v, defs, None)?,
            Values::Bool(v) => column.typed::<BoolType>().write_batch(v, defs, None)?,
            Values::Int(v) => column.typed::<Int64Type>().write_batch(v, defs, None)?,
            Values::Float(v) => column.typed::<DoubleType>().write_batch(v, defs, None)?,
        };
        self.defs.clear();
        match &mut self.values {
            Values::Bytes(v) => v.clear(),
            Values::Bool(v) => v.clear(),
            Values::Int(v) => v.clear(),
            Values::Float(v) => v.clear(),
        }
        Ok(())
    }
}

/// A JSON string's value: a slice of `event` when it has no escapes.
fn string_value(event: &Bytes, raw: &[u8]) -> Option<Bytes> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if memchr::memchr(b'\\', inner).is_none() {
        return Some(event.slice_ref(inner));
    }
    serde_json::from_slice::<String>(raw).ok().map(Bytes::from)
}

/// A JSON number's value as a finite double.
fn float(raw: &[u8]) -> Option<f64> {
    let f: f64 = std::str::from_utf8(raw).ok()?.parse().ok()?;
    f.is_finite().then_some(f)
}

/// The rows of the row group being built, column by column.
struct Group {
    received_at: Vec<i64>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    columns: Vec<Pending>,
    extra: Pending,
}

impl Group {
    fn push_extra(&mut self, json: Bytes) {
        if let Values::Bytes(v) = &mut self.extra.values {
            v.push(ByteArray::from(json));
            self.extra.defs.push(1);
        }
    }

    /// Column `index` of the schema: the three log columns, the plan's, `_extra`.
    fn write_column(
        &mut self,
        index: usize,
        column: &mut SerializedColumnWriter<'_>,
    ) -> Result<(), TableError> {
        match index {
            0 => column
                .typed::<Int64Type>()
                .write_batch(&self.received_at, None, None)
                .map(drop)?,
            1 => column
                .typed::<Int32Type>()
                .write_batch(&self.partition, None, None)
                .map(drop)?,
            2 => column
                .typed::<Int64Type>()
                .write_batch(&self.offset, None, None)
                .map(drop)?,
            i => match self.columns.get_mut(i - 3) {
                Some(pending) => pending.write(column)?,
                None => self.extra.write(column)?,
            },
        }
        Ok(())
    }
}

/// Builds one Parquet file in memory, a row group at a time.
pub struct TableWriter {
    plan: Plan,
    writer: SerializedFileWriter<Vec<u8>>,
    settings: TableSettings,
    group: Group,
    extra_buf: Vec<u8>,
    rows: u64,
}

impl TableWriter {
    pub fn new(plan: Plan, settings: TableSettings) -> Result<Self, TableError> {
        let schema = Arc::new(schema(&plan)?);
        let level = ZstdLevel::try_new(settings.zstd_level)?;
        let mut props = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_2_0)
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(settings.row_group_rows.max(1)));
        // Dense, rising numbers: deltas take a few bits a row, a dictionary ~8 bytes.
        for column in ["received_at", "offset"] {
            let path = ColumnPath::from(column);
            props = props
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
        let props = props.build();
        let writer = SerializedFileWriter::new(Vec::new(), schema, Arc::new(props))?;
        let columns = plan
            .columns()
            .iter()
            .map(|c| Pending::new(c.kind))
            .collect();
        Ok(TableWriter {
            plan,
            writer,
            settings,
            group: Group {
                received_at: Vec::new(),
                partition: Vec::new(),
                offset: Vec::new(),
                columns,
                extra: Pending::new(Kind::Json),
            },
            extra_buf: Vec::new(),
            rows: 0,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Add one event, its fields spread over the columns.
    pub fn push(&mut self, row: &Row) -> Result<(), TableError> {
        let event = &row.event;
        let group = &mut self.group;
        group.received_at.push(row.received_at);
        group.partition.push(row.partition as i32);
        group.offset.push(row.offset as i64);
        let before = group.received_at.len() - 1;
        let mut extra = std::mem::take(&mut self.extra_buf);
        extra.clear();
        let mut hint = 0;
        let parsed = fields(event, |name, raw| {
            let column = self.plan.column_hinted(&name, hint);
            hint = column.map_or(0, |i| i + 1);
            let placed = column.is_some_and(|i| {
                let column = &mut group.columns[i];
                // `null` leaves the column null, as a missing field does.
                column.defs.len() == before && (raw == b"null" || column.push(event, raw))
            });
            if !placed {
                extra.push(if extra.is_empty() { b'{' } else { b',' });
                // A name is a string; writing one to a Vec cannot fail.
                let _ = serde_json::to_writer(&mut extra, name.as_ref());
                extra.push(b':');
                extra.extend_from_slice(raw);
            }
        });
        for column in &mut group.columns {
            if column.defs.len() == before {
                column.push_null();
            }
        }
        if parsed.is_err() {
            // Not an object: the whole event is kept as it was sent.
            group.push_extra(event.clone());
        } else if extra.is_empty() {
            group.extra.push_null();
        } else {
            extra.push(b'}');
            group.push_extra(Bytes::copy_from_slice(&extra));
        }
        self.extra_buf = extra;
        self.rows += 1;
        if self.group.received_at.len() >= self.settings.row_group_rows.max(1) {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TableError> {
        if self.group.received_at.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            self.group.write_column(index, &mut column)?;
            column.close()?;
            index += 1;
        }
        group.close()?;
        self.group.received_at.clear();
        self.group.partition.clear();
        self.group.offset.clear();
        Ok(())
    }

    /// The finished file.
    pub fn finish(mut self) -> Result<Bytes, TableError> {
        self.flush()?;
        Ok(Bytes::from(self.writer.into_inner()?))
    }
}

fn schema(plan: &Plan) -> Result<Type, TableError> {
    let required = |name: &str, physical, logical| {
        Type::primitive_type_builder(name, physical)
            .with_repetition(Repetition::REQUIRED)
            .with_logical_type(logical)
            .build()
    };
    let mut fields = vec![
        Arc::new(required(
            "received_at",
            Physical::INT64,
            Some(LogicalType::timestamp(true, TimeUnit::MILLIS)),
        )?),
        Arc::new(required("partition", Physical::INT32, None)?),
        Arc::new(required("offset", Physical::INT64, None)?),
    ];
    for column in plan.columns() {
        fields.push(Arc::new(optional(&column.name, column.kind)?));
    }
    fields.push(Arc::new(optional(EXTRA, Kind::Json)?));
    Ok(Type::group_type_builder("event")
        .with_fields(fields)
        .build()?)
}

fn optional(name: &str, kind: Kind) -> Result<Type, TableError> {
    let (physical, logical) = match kind {
        Kind::String => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
        Kind::Json => (Physical::BYTE_ARRAY, Some(LogicalType::Json)),
        Kind::Boolean => (Physical::BOOLEAN, None),
        Kind::Integer => (Physical::INT64, None),
        Kind::Number => (Physical::DOUBLE, None),
    };
    Ok(Type::primitive_type_builder(name, physical)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(logical)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::segment::ReceivedAt;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn line(millis: i64, event: &str) -> Bytes {
        let at = ReceivedAt::from_millis(millis);
        Bytes::from(format!(
            "{{\"received_at\":\"{}\",\"event\":{event}}}",
            at.as_str()
        ))
    }

    fn read(file: Bytes) -> Vec<String> {
        let reader = SerializedFileReader::new(file).unwrap();
        reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| r.unwrap().to_string())
            .collect()
    }

    #[test]
    fn rows_keep_every_field_in_a_column_or_in_extra() {
        let events = [
            r#"{"s":"plain","i":1,"f":0.5,"b":true,"o":{"k":[1, 2]}}"#,
            r#"{"s":"tab\there","i":"not a number","f":1e400,"dt":"x","new":1}"#,
            r#"{"s":"one","i":9223372036854775807,"s":"dup","b":null}"#,
        ];
        let lines: Vec<Bytes> = events.iter().map(|e| line(1_000, e)).collect();
        let bodies: Vec<Bytes> = lines.iter().map(|l| envelope(l).unwrap().1).collect();
        let plan = Plan::infer(bodies.iter().map(|b| b.as_ref()), 100);
        let settings = TableSettings {
            row_group_rows: 2,
            zstd_level: 3,
        };
        let mut table = TableWriter::new(plan, settings).unwrap();
        for (offset, line) in lines.iter().enumerate() {
            let row = Row::of_line(3, offset as u64 + 10, line).unwrap();
            table.push(&row).unwrap();
        }
        assert_eq!(table.rows(), 3);
        let rows = read(table.finish().unwrap());
        let at = "received_at: 1970-01-01 00:00:01.000 +00:00, partition: 3";
        assert_eq!(
            rows,
            [
                format!(
                    r#"{{{at}, offset: 10, s: "plain", i: "1", f: 0.5, b: true, o: "{{"k":[1, 2]}}", new: null, _extra: null}}"#
                ),
                format!(
                    r#"{{{at}, offset: 11, s: "tab	here", i: ""not a number"", f: null, b: null, o: null, new: 1, _extra: "{{"f":1e400,"dt":"x"}}"}}"#
                ),
                format!(
                    r#"{{{at}, offset: 12, s: "one", i: "9223372036854775807", f: null, b: null, o: null, new: null, _extra: "{{"s":"dup"}}"}}"#
                ),
            ]
        );
    }
}
