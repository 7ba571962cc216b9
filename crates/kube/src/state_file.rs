//! State files: a cluster's Services, EndpointSlices and Nodes as Kubernetes YAML, to
//! replay without an API server (`kipvs plan --state`, `kipvs run --state`).
//!
//! Accepted: multi-document YAML, and `kind: List` documents as
//! `kubectl get svc,endpointslices,nodes -A -o yaml` prints them. Objects of other kinds
//! are skipped and reported. A bad object is an error naming the file, the document (and
//! its first line), the item within a List, the object and the field.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

/// The objects of a state file, in file order.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// v1 Services.
    pub services: Vec<Service>,
    /// discovery.k8s.io/v1 EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// v1 Nodes.
    pub nodes: Vec<Node>,
    /// Objects of other kinds that were skipped, as `Kind namespace/name`.
    pub skipped: Vec<String>,
}

/// Why a state file was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The file could not be read.
    #[error("cannot read the state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{origin}:{line}:{column}: document {document}: {message}")]
    Syntax {
        /// The file.
        origin: String,
        /// 1-based document number.
        document: usize,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What the YAML parser said.
        message: String,
    },
    /// An object is malformed.
    #[error(transparent)]
    Object(Box<ObjectError>),
}

/// A malformed object: where it is and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: document {document} (line {line}){item}: {object}: {field}: {message}")]
pub struct ObjectError {
    /// The file.
    pub origin: String,
    /// 1-based document number.
    pub document: usize,
    /// First line of the document.
    pub line: usize,
    /// `, item N` within a List, or empty.
    pub item: String,
    /// `Kind namespace/name` as far as it is known.
    pub object: String,
    /// Dotted path of the bad field within the object (`.` for the object itself).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Reads and parses a state file.
///
/// Fails when the file cannot be read or any document or object is invalid; nothing of
/// a bad file is returned, so callers keep their previous state.
pub fn load(path: &Path) -> Result<ClusterState, StateFileError> {
    Parser::default().load(path)
}

/// Parses state-file text; `origin` names it in errors.
///
/// Fails as [`load`] does.
pub fn parse(text: &str, origin: &str) -> Result<ClusterState, StateFileError> {
    Parser::default().parse(text, origin)
}

/// Parses a state file again and again (`kipvs run --state` re-reads it whenever it
/// changes), re-parsing only the parts whose text changed since the last good parse.
///
/// A part is the text from one `---` line to the next: YAML ends a document at every
/// such line, so parts parse alone exactly as within the whole file. Parsing YAML into
/// Kubernetes objects is nearly all the cost of a re-read (about 1.5 s for 10,000
/// Services with their slices); a changed Service costs one part's parse.
#[derive(Debug, Default)]
pub struct Parser {
    /// The objects of each part of the last good parse, by the part's text.
    parts: HashMap<String, Part>,
}

/// What one part of the file holds.
#[derive(Debug, Clone, Default)]
struct Part {
    /// How many YAML documents the part holds (empty ones included), for numbering the
    /// documents of the parts after it.
    documents: usize,
    /// Its objects.
    state: ClusterState,
}

impl Parser {
    /// Reads and parses the state file at `path`.
    ///
    /// Fails as [`load`] does; the parts remembered stay those of the last good parse.
    pub fn load(&mut self, path: &Path) -> Result<ClusterState, StateFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| StateFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.parse(&text, &path.display().to_string())
    }

    /// Parses state-file text; `origin` names it in errors.
    ///
    /// Fails as [`load`] does; the parts remembered stay those of the last good parse.
    pub fn parse(&mut self, text: &str, origin: &str) -> Result<ClusterState, StateFileError> {
        let mut parts: HashMap<String, Part> = HashMap::with_capacity(self.parts.len());
        let mut state = ClusterState::default();
        let mut documents = 0;
        for (first_line, part_text) in split_parts(text) {
            // A known part keeps its key: no copy of its text per re-read.
            let known = self.parts.remove_entry(part_text).or_else(|| {
                parts
                    .get(part_text)
                    .map(|part| (part_text.to_owned(), part.clone()))
            });
            let (key, part) = match known {
                Some(known) => known,
                None => match parse_part(part_text, origin, documents, first_line) {
                    Ok(part) => (part_text.to_owned(), part),
                    Err(err) => {
                        self.parts.extend(parts);
                        return Err(err);
                    }
                },
            };
            documents += part.documents;
            state.append(part.state.clone());
            parts.insert(key, part);
        }
        self.parts = parts;
        Ok(state)
    }
}

impl ClusterState {
    fn append(&mut self, mut other: ClusterState) {
        self.services.append(&mut other.services);
        self.endpoint_slices.append(&mut other.endpoint_slices);
        self.nodes.append(&mut other.nodes);
        self.skipped.append(&mut other.skipped);
    }
}

/// The parts of `text` with their first line (1-based): cut before every line that
/// opens a document (`---` alone or followed by a space), unless all before it since
/// the last cut is blank lines, comments and directives, which belong to the document
/// that follows (alone they would parse as an empty document of their own).
fn split_parts(text: &str) -> Vec<(usize, &str)> {
    let mut parts = Vec::new();
    let (mut start, mut start_line) = (0, 1);
    let mut offset = 0;
    let mut substance = false;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let marker = line.strip_prefix("---").is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_whitespace())
        });
        if marker && substance {
            parts.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, index + 1);
        }
        let trimmed = line.trim_start();
        substance |= marker || !(trimmed.is_empty() || trimmed.starts_with(['#', '%']));
        offset += line.len();
    }
    if offset > start {
        parts.push((start_line, &text[start..]));
    }
    parts
}

/// Parses one part whose first line is `first_line` of the file and whose documents
/// follow `before` others.
fn parse_part(
    text: &str,
    origin: &str,
    before: usize,
    first_line: usize,
) -> Result<Part, StateFileError> {
    let starts = document_start_lines(text);
    let mut part = Part::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        part.documents += 1;
        let number = before + index + 1;
        let line = starts.get(index).map_or(0, |l| l + first_line - 1);
        let value = Value::deserialize(document).map_err(|err| {
            let (line, column) = err
                .location()
                .map_or((0, 0), |loc| (loc.line() + first_line - 1, loc.column()));
            StateFileError::Syntax {
                origin: origin.to_owned(),
                document: number,
                line,
                column,
                message: err.to_string(),
            }
        })?;
        let at = Place {
            origin,
            document: number,
            line,
        };
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        if kind_of(&value) == Some("List") {
            let items = match value.get("items") {
                None | Some(Value::Null) => continue,
                Some(Value::Sequence(items)) => items,
                Some(_) => {
                    return Err(at.error(None, &value, "items", "expected a list of objects"))
                }
            };
            for (item, object) in items.iter().enumerate() {
                add_object(&mut part.state, object, &at, Some(item + 1))?;
            }
        } else {
            add_object(&mut part.state, &value, &at, None)?;
        }
    }
    Ok(part)
}

/// Where an object sits in the file, for error messages.
struct Place<'a> {
    origin: &'a str,
    document: usize,
    line: usize,
}

impl Place<'_> {
    fn error(
        &self,
        item: Option<usize>,
        object: &Value,
        field: &str,
        message: &str,
    ) -> StateFileError {
        StateFileError::Object(Box::new(ObjectError {
            origin: self.origin.to_owned(),
            document: self.document,
            line: self.line,
            item: item.map(|n| format!(", item {n}")).unwrap_or_default(),
            object: describe(object),
            field: field.to_owned(),
            message: message.to_owned(),
        }))
    }
}

fn add_object(
    state: &mut ClusterState,
    object: &Value,
    at: &Place<'_>,
    item: Option<usize>,
) -> Result<(), StateFileError> {
    match kind_of(object) {
        Some("Service") => state.services.push(decode(object, at, item)?),
        Some("EndpointSlice") => state.endpoint_slices.push(decode(object, at, item)?),
        Some("Node") => state.nodes.push(decode(object, at, item)?),
        Some(_) => state.skipped.push(describe(object)),
        None => return Err(at.error(item, object, "kind", "missing: every object needs a kind")),
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(
    object: &Value,
    at: &Place<'_>,
    item: Option<usize>,
) -> Result<T, StateFileError> {
    serde_path_to_error::deserialize(object.clone()).map_err(|err| {
        let field = err.path().to_string();
        at.error(item, object, &field, &err.into_inner().to_string())
    })
}

fn kind_of(object: &Value) -> Option<&str> {
    object.get("kind").and_then(Value::as_str)
}

/// `Kind namespace/name`, as far as the object says.
fn describe(object: &Value) -> String {
    let kind = kind_of(object).unwrap_or("object");
    let metadata = object.get("metadata");
    let field = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => format!("{kind} (unnamed)"),
    }
}

/// The first line of each document: 1, then the line after each `---` separator that
/// follows content (a leading `---` opens the first document).
fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = vec![1];
    let mut seen_content = false;
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            if seen_content {
                starts.push(index + 2);
            } else if let Some(first) = starts.first_mut() {
                *first = index + 2;
            }
            seen_content = false;
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            seen_content = true;
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> ClusterState {
        parse(text, "state.yaml").unwrap()
    }

    #[test]
    fn the_example_cluster_parses() {
        let state = parse_ok(include_str!("../../../examples/cluster.yaml"));
        assert_eq!(state.services.len(), 3);
        assert_eq!(state.endpoint_slices.len(), 3);
        assert_eq!(state.nodes.len(), 1);
        assert!(state.skipped.is_empty());
        let web = &state.services[1];
        assert_eq!(web.metadata.name.as_deref(), Some("web"));
        let spec = web.spec.as_ref().unwrap();
        assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, Some(30080));
    }

    #[test]
    fn multi_document_files_parse_and_other_kinds_are_skipped() {
        let state = parse_ok(
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n---\n",
        );
        assert_eq!(state.services.len(), 1);
        assert_eq!(state.skipped, vec!["Pod x/p"]);
    }

    #[test]
    fn a_bad_field_names_document_object_and_field() {
        let text = "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports:\n  - port: eighty\n";
        let err = parse(text, "state.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "state.yaml: document 2 (line 5): Service shop/web: spec.ports[0].port:"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_bad_item_in_a_list_is_named_by_its_position() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: n}}\n- {apiVersion: discovery.k8s.io/v1beta1, kind: EndpointSlice, metadata: {name: s, namespace: d}, addressType: IPv4, endpoints: []}\n";
        let err = parse(text, "state.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with("state.yaml: document 1 (line 1), item 2: EndpointSlice d/s:"),
            "{err}"
        );
        assert!(
            err.contains("\"discovery.k8s.io/v1beta1\", expected discovery.k8s.io/v1"),
            "{err}"
        );
    }

    #[test]
    fn an_object_without_kind_is_refused() {
        let err = parse("apiVersion: v1\nmetadata: {name: x}\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind: missing"), "{err}");
    }

    #[test]
    fn broken_yaml_names_line_and_column() {
        let err = parse("kind: Service\nmetadata: {name: [\n", "s.yaml").unwrap_err();
        assert!(
            matches!(err, StateFileError::Syntax { line: 2.., .. }),
            "{err}"
        );
    }

    #[test]
    fn comments_before_the_first_separator_are_no_document() {
        let text = "# cluster\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: x}]}\n";
        let err = parse(text, "s.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with("s.yaml: document 1 (line 3): Service shop/web"),
            "{err}"
        );
    }

    #[test]
    fn a_re_parse_reuses_unchanged_parts_and_numbers_errors_in_the_whole_file() {
        let service = |name: &str, port: &str| {
            format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec: {{ports: [{{port: {port}}}]}}\n")
        };
        let mut parser = Parser::default();
        let first = [service("a", "80"), service("b", "81"), service("c", "82")].concat();
        let state = parser.parse(&first, "s.yaml").unwrap();
        assert_eq!(state.services.len(), 3);
        assert_eq!(parser.parts.len(), 3);

        // The third part is broken: the error names its document and line in the file.
        let broken = [service("a", "80"), service("b", "81"), service("c", "x")].concat();
        let err = parser.parse(&broken, "s.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with("s.yaml: document 3 (line 12): Service x/c"),
            "{err}"
        );
        assert_eq!(parser.parts.len(), 3, "a failed parse forgets nothing");

        // One part changed, one added, one gone: objects in file order, parts replaced.
        let next = [service("b", "81"), service("c", "90"), service("d", "83")].concat();
        let state = parser.parse(&next, "s.yaml").unwrap();
        let names: Vec<_> = state
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["b", "c", "d"]);
        let port = state.services[1]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .port;
        assert_eq!(port, 90);
        assert_eq!(parser.parts.len(), 3);
        assert_eq!(parse(&next, "s.yaml").unwrap().services, state.services);
    }

    #[test]
    fn parts_are_cut_only_at_document_markers() {
        let text = "a: 1\n---\nb: |\n  ---x\n--- {c: 2}\n----\n---\n";
        let parts: Vec<_> = split_parts(text)
            .into_iter()
            .map(|(line, _)| line)
            .collect();
        assert_eq!(parts, [1, 2, 5, 7]);
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = load(Path::new("/nonexistent/state.yaml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/state.yaml"), "{err}");
    }
}
