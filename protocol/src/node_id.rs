//! Node ids: chosen by operators (`--id`), shown in URLs (`/demo/nodes/{id}`),
//! used as directory names (`./data/<id>`) and as the stem of actor ids.
//! One rule for every process, so an id that one part accepts is never
//! refused by another.

/// Longest node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Why a node id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node id {id:?} {reason}")]
pub struct InvalidNodeId {
    /// The refused id.
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Accepts 1–64 ASCII letters, digits, `.`, `_` and `-`: safe in a path
/// segment, a file name and a log line without quoting.
pub fn validate_node_id(id: &str) -> Result<(), InvalidNodeId> {
    let refuse = |reason| {
        Err(InvalidNodeId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return refuse("must be 1 to 64 characters");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return refuse("may only hold letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_pass() {
        for id in ["n1", "node-1", "a.b_c-9", &"x".repeat(64)] {
            assert_eq!(validate_node_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn empty_long_and_odd_ids_are_refused_with_the_reason() {
        let long = "x".repeat(65);
        for id in ["", long.as_str(), "a b", "a/b", "a~1", "é", "a\n"] {
            let error = validate_node_id(id).expect_err(id);
            assert_eq!(error.id, id);
        }
        assert_eq!(
            validate_node_id("a/b").unwrap_err().to_string(),
            "node id \"a/b\" may only hold letters, digits, '.', '_' and '-'"
        );
    }
}
