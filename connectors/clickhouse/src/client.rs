//! ClickHouse over HTTP (the `clickhouse` crate): schema reads and `JSONEachRow` inserts.
//!
//! Row validation of the crate is off (`with_validation(false)`): it needs
//! `RowBinaryWithNamesAndTypes`, which ClickHouse 18.16 lacks, and this sink sends
//! pre-formatted `JSONEachRow` checked by its own mapping anyway.

use std::time::Duration;

use clickhouse::{Client, Compression};

use crate::config::{ClickHouseSinkConfig, CompressionMode};
use crate::mapping::SystemColumn;

/// Error codes meaning "this data (or its column list) is wrong", as opposed to the
/// server being unavailable: retrying the same insert cannot succeed.
const DATA_ERROR_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    8,   // THERE_IS_NO_COLUMN
    10,  // NOT_FOUND_COLUMN_IN_BLOCK
    16,  // NO_SUCH_COLUMN_IN_TABLE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    47,  // UNKNOWN_IDENTIFIER
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    376, // CANNOT_PARSE_UUID
];

/// A failed ClickHouse request.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    /// The server refused the data: retrying the same rows cannot succeed.
    #[error("ClickHouse rejected the insert into {table} (code {code})")]
    Rejected {
        /// The table.
        table: String,
        /// The server's error code.
        code: u32,
        /// The server's answer.
        #[source]
        source: clickhouse::error::Error,
    },
    /// The server is unreachable, overloaded or failed otherwise: retry.
    #[error("ClickHouse request failed: {what}")]
    Unavailable {
        /// What was attempted.
        what: String,
        /// The client error.
        #[source]
        source: clickhouse::error::Error,
    },
    /// The request did not finish in time.
    #[error("ClickHouse request timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    /// An answer could not be parsed.
    #[error("unexpected ClickHouse answer to {what}")]
    BadAnswer {
        /// What was asked.
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// The server error code in a `Code: N, ...` message.
pub fn error_code(error: &clickhouse::error::Error) -> Option<u32> {
    let clickhouse::error::Error::BadResponse(text) = error else { return None };
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A configured ClickHouse client.
#[derive(Clone)]
pub struct ClickHouse {
    client: Client,
    timeout: Duration,
    async_insert: bool,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl ClickHouse {
    /// A client from the connector configuration (no request is made yet).
    pub fn new(config: &ClickHouseSinkConfig) -> Self {
        let mut client = Client::default()
            .with_url(&config.url)
            .with_database(&config.database)
            .with_validation(false)
            .with_compression(match config.compression {
                CompressionMode::None => Compression::None,
                CompressionMode::Lz4 => Compression::Lz4,
            });
        if let Some(user) = &config.user {
            client = client.with_user(user);
        }
        if let Some(password) = &config.password {
            client = client.with_password(password.expose());
        }
        for (name, value) in &config.settings {
            client = client.with_setting(name, value);
        }
        Self { client, timeout: config.insert_timeout, async_insert: config.async_insert }
    }

    async fn fetch_json_lines(&self, sql: String, what: &str) -> Result<Vec<u8>, ClickHouseError> {
        let unavailable = |source| ClickHouseError::Unavailable { what: what.to_string(), source };
        let request = async {
            let mut cursor = self.client.query(&sql).fetch_bytes("JSONEachRow").map_err(unavailable)?;
            cursor.collect().await.map_err(unavailable)
        };
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map(|bytes| bytes.to_vec()),
            Err(_) => Err(ClickHouseError::Timeout(self.timeout, what.to_string())),
        }
    }

    /// `(major, minor)` of `SELECT version()`.
    pub async fn version(&self) -> Result<(u32, u32), ClickHouseError> {
        #[derive(serde::Deserialize)]
        struct Row {
            v: String,
        }
        let body = self.fetch_json_lines("SELECT version() AS v".into(), "SELECT version()").await?;
        let row: Row = serde_json::from_slice(body.trim_ascii())
            .map_err(|source| ClickHouseError::BadAnswer { what: "SELECT version()".into(), source })?;
        let mut parts = row.v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
    }

    /// The columns of `database.table` in table order (empty when it does not exist).
    pub async fn columns(&self, database: &str, table: &str) -> Result<Vec<SystemColumn>, ClickHouseError> {
        let sql = format!(
            "SELECT name, type, default_kind FROM system.columns WHERE database = {} AND table = {}",
            quote_literal(database),
            quote_literal(table)
        );
        let what = format!("columns of {database}.{table}");
        let body = match self.fetch_json_lines(sql, &what).await {
            // 18.16 answers UNKNOWN_DATABASE instead of no rows: the table does not exist.
            Err(ClickHouseError::Unavailable { source, .. }) if error_code(&source) == Some(81) => {
                return Ok(Vec::new())
            }
            other => other?,
        };
        body.split(|&b| b == b'\n')
            .filter(|line| !line.trim_ascii().is_empty())
            .map(|line| {
                serde_json::from_slice(line).map_err(|source| ClickHouseError::BadAnswer { what: what.clone(), source })
            })
            .collect()
    }

    /// The table's `engine_full` (`ReplacingMergeTree(v) ORDER BY id ...`), empty when it
    /// does not exist.
    pub async fn engine_full(&self, database: &str, table: &str) -> Result<String, ClickHouseError> {
        #[derive(serde::Deserialize)]
        struct Row {
            engine_full: String,
        }
        let sql = format!(
            "SELECT engine_full FROM system.tables WHERE database = {} AND name = {}",
            quote_literal(database),
            quote_literal(table)
        );
        let what = format!("engine of {database}.{table}");
        let body = self.fetch_json_lines(sql, &what).await?;
        let body = body.trim_ascii();
        if body.is_empty() {
            return Ok(String::new());
        }
        let row: Row = serde_json::from_slice(body).map_err(|source| ClickHouseError::BadAnswer { what, source })?;
        Ok(row.engine_full)
    }

    /// Runs a statement without a result (DDL, `INSERT ... SELECT`). A statement the server
    /// refuses is [`ClickHouseError::Rejected`] when its error code says the statement or
    /// data is wrong.
    pub async fn execute(&self, sql: &str, what: &str) -> Result<(), ClickHouseError> {
        self.execute_with(&self.client, sql, what).await
    }

    /// [`Self::execute`] in the `system` database, for statements that must not depend on the
    /// configured database existing (`CREATE DATABASE`).
    pub async fn execute_in_system(&self, sql: &str, what: &str) -> Result<(), ClickHouseError> {
        let client = self.client.clone().with_database("system");
        self.execute_with(&client, sql, what).await
    }

    async fn execute_with(&self, client: &Client, sql: &str, what: &str) -> Result<(), ClickHouseError> {
        let request = client.query(sql).execute();
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(match error_code(&source) {
                Some(code) if DATA_ERROR_CODES.contains(&code) || STATEMENT_ERROR_CODES.contains(&code) => {
                    ClickHouseError::Rejected { table: what.to_string(), code, source }
                }
                _ => ClickHouseError::Unavailable { what: what.to_string(), source },
            }),
            Err(_) => Err(ClickHouseError::Timeout(self.timeout, what.to_string())),
        }
    }

    /// How many rows of `database.table` carry `token` in `column`.
    pub async fn count_token(
        &self,
        database: &str,
        table: &str,
        column: &str,
        token: &str,
    ) -> Result<u64, ClickHouseError> {
        #[derive(serde::Deserialize)]
        struct Row {
            n: String,
        }
        let sql = format!(
            "SELECT toString(count()) AS n FROM {}.{} WHERE {} = {}",
            quote_ident(database),
            quote_ident(table),
            quote_ident(column),
            quote_literal(token)
        );
        let what = format!("batch lookup in {database}.{table}");
        let body = self.fetch_json_lines(sql, &what).await?;
        let row: Row = serde_json::from_slice(body.trim_ascii())
            .map_err(|source| ClickHouseError::BadAnswer { what: what.clone(), source })?;
        row.n.parse().map_err(|_| ClickHouseError::BadAnswer {
            what,
            source: <serde_json::Error as serde::de::Error>::custom(format!("count `{}` is not a number", row.n)),
        })
    }

    /// Inserts a `JSONEachRow` body into `database.table (columns)`.
    pub async fn insert(
        &self,
        database: &str,
        table: &str,
        columns: &[String],
        body: Vec<u8>,
        dedup_token: Option<&str>,
    ) -> Result<(), ClickHouseError> {
        let column_list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let sql = format!(
            "INSERT INTO {}.{} ({}) FORMAT JSONEachRow",
            quote_ident(database),
            quote_ident(table),
            column_list.join(", ")
        );
        let mut insert = self.client.insert_formatted_with(sql).with_timeouts(Some(self.timeout), Some(self.timeout));
        if let Some(token) = dedup_token {
            insert = insert.with_setting("insert_deduplication_token", token);
        }
        if self.async_insert {
            insert = insert.with_setting("async_insert", "1").with_setting("wait_for_async_insert", "1");
        }
        let label = format!("{database}.{table}");
        let classify = |source: clickhouse::error::Error| match error_code(&source) {
            Some(code) if DATA_ERROR_CODES.contains(&code) => {
                ClickHouseError::Rejected { table: label.clone(), code, source }
            }
            _ => ClickHouseError::Unavailable { what: format!("insert into {label}"), source },
        };
        insert.send(body.into()).await.map_err(classify)?;
        insert.end().await.map_err(classify)
    }
}

/// Error codes of a statement that cannot succeed as written (retrying is pointless).
const STATEMENT_ERROR_CODES: &[u32] = &[
    15,  // DUPLICATE_COLUMN
    36,  // BAD_ARGUMENTS
    43,  // ILLEGAL_TYPE_OF_ARGUMENT
    44,  // ILLEGAL_COLUMN
    47,  // UNKNOWN_IDENTIFIER
    50,  // UNKNOWN_TYPE
    57,  // TABLE_ALREADY_EXISTS
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    81,  // UNKNOWN_DATABASE
    181, // ILLEGAL_FINAL
    497, // ACCESS_DENIED
];

/// Quotes a string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_the_message() {
        let e = clickhouse::error::Error::BadResponse("Code: 27, e.displayText() = DB::Exception: Cannot parse".into());
        assert_eq!(error_code(&e), Some(27));
        assert_eq!(error_code(&clickhouse::error::Error::TimedOut), None);
    }

    #[test]
    fn identifiers_and_literals_are_escaped() {
        assert_eq!(quote_ident("a`b"), "`a\\`b`");
        assert_eq!(quote_literal("it's"), "'it\\'s'");
    }
}
