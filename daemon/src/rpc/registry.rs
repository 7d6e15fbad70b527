//! The method registry: a method's name, params, result, errors and documentation are declared
//! together by implementing [`Method`]; [`Registry::register`] adds it both to the
//! [`MethodTable`] that the transport dispatches through and to the OpenRPC document, whose
//! per-method `errors` are the kinds of the method's error type.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::{CallError, ErrorKind, MethodError, RpcError};

/// The OpenRPC version of the generated document.
pub const OPENRPC_VERSION: &str = "1.3.2";

/// One RPC method.
///
/// ```ignore
/// pub struct Status;
/// impl Method for Status {
///     const NAME: &'static str = "status";
///     const SUMMARY: &'static str = "Daemon version, uptime and clients.";
///     type Params = NoParams;
///     type Result = StatusResult;
///     type Error = std::convert::Infallible;
///     async fn call(ctx: Arc<Ctx>, _conn: Conn, _p: NoParams) -> Result<StatusResult, CallError<Infallible>> { /* … */ }
/// }
/// // in rpc::methods::register_all:
/// registry.register::<Status>()?;
/// ```
pub trait Method: Send + Sync + 'static {
    /// Lower-case dotted `domain.verb`, e.g. `bundle.get`.
    const NAME: &'static str;
    /// One line for the OpenRPC `summary`.
    const SUMMARY: &'static str;
    /// Longer text for the OpenRPC `description` (may be empty).
    const DESCRIPTION: &'static str = "";

    /// The by-name params object. Derive `Deserialize` (with `deny_unknown_fields`) and `JsonSchema`.
    type Params: DeserializeOwned + JsonSchema + Send + 'static;
    /// The result. Derive `Serialize` and `JsonSchema`.
    type Result: Serialize + JsonSchema + Send + 'static;
    /// The errors it answers besides the standard ones: its operation's error enum (the
    /// OpenRPC document lists that enum's kinds).
    type Error: MethodError;

    /// Runs the method. Write it as `async fn call(…)` in the impl.
    fn call(
        ctx: Arc<Ctx>,
        conn: Conn,
        params: Self::Params,
    ) -> impl Future<Output = Result<Self::Result, CallError<Self::Error>>> + Send;
}

/// Params of a method that takes none: `{}` or absent.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Registration failed (a duplicate or badly formed name: a programming error).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two methods share a name.
    #[error("method {0} registered twice")]
    Duplicate(&'static str),
    /// The name breaks the naming rule.
    #[error("method name `{0}` is not lower-case dotted snake_case")]
    BadName(&'static str),
}

struct MethodDoc {
    name: &'static str,
    summary: &'static str,
    description: &'static str,
    params: Value,
    result: Value,
    errors: Vec<ErrorKind>,
}

/// A running call: the serialized result, or the error to answer.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<String, RpcError>> + Send>>;

/// Parses the params and starts the method.
type Handler = Box<dyn Fn(Arc<Ctx>, Conn, Option<&str>) -> CallFuture + Send + Sync>;

/// Every registered method by name, with the context their calls see. Cheap to clone.
#[derive(Clone)]
pub struct MethodTable {
    ctx: Arc<Ctx>,
    methods: Arc<HashMap<&'static str, Handler>>,
}

impl std::fmt::Debug for MethodTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodTable")
            .field("methods", &self.methods.len())
            .finish_non_exhaustive()
    }
}

impl MethodTable {
    /// Starts a call of `name` on `conn` with the raw params object (`None` when absent);
    /// `None` when there is no such method.
    pub fn call(&self, name: &str, conn: Conn, params: Option<&str>) -> Option<CallFuture> {
        let handler = self.methods.get(name)?;
        Some(handler(Arc::clone(&self.ctx), conn, params))
    }

    /// The names of every method.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.methods.keys().copied()
    }
}

/// The handler of `M`: params are parsed before the call starts, the result serialized once.
fn handler<M: Method>() -> Handler {
    Box::new(
        |ctx, conn, params| match parse_params::<M::Params>(params) {
            Err(e) => Box::pin(std::future::ready(Err(e))),
            Ok(p) => Box::pin(async move {
                let result = M::call(ctx, conn, p).await.map_err(CallError::into_rpc)?;
                serde_json::to_string(&result)
                    .map_err(|e| RpcError::internal(format!("cannot serialize the result: {e}")))
            }),
        },
    )
}

/// Collects methods into a [`MethodTable`] and their OpenRPC entries.
pub struct Registry {
    ctx: Arc<Ctx>,
    methods: HashMap<&'static str, Handler>,
    docs: Vec<MethodDoc>,
    params_gen: SchemaGenerator,
    result_gen: SchemaGenerator,
}

fn generator(contract: Contract) -> SchemaGenerator {
    SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.contract = contract;
        })
        .into_generator()
}

/// `domain.verb` in lower-case snake_case parts.
pub fn valid_method_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            part.starts_with(|c: char| c.is_ascii_lowercase())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// Parses a by-name params object; absent params mean `{}`.
pub fn parse_params<P: DeserializeOwned>(raw: Option<&str>) -> Result<P, RpcError> {
    let text = raw.map(str::trim_start).unwrap_or("{}");
    if !text.starts_with('{') {
        return Err(RpcError::invalid_params(
            "params must be a by-name JSON object",
        ));
    }
    // `raw` is one JSON value (the line was parsed once already): nothing can follow it.
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
        .map_err(|e| RpcError::invalid_params(params_message(&e)))
}

/// "invalid params: `to[0]`: invalid type: …", naming the param when the error is inside one,
/// without serde_json's position (within the params, not the line).
fn params_message(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner();
    let text = inner.to_string();
    let suffix = format!(" at line {} column {}", inner.line(), inner.column());
    let what = text.strip_suffix(&suffix).unwrap_or(&text);
    match e.path().to_string().as_str() {
        "." => format!("invalid params: {what}"),
        path => format!("invalid params: `{path}`: {what}"),
    }
}

impl Registry {
    /// An empty registry whose methods will see `ctx`.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            methods: HashMap::new(),
            docs: Vec::new(),
            params_gen: generator(Contract::Deserialize),
            result_gen: generator(Contract::Serialize),
        }
    }

    /// Adds `M` to the method table and the OpenRPC document.
    pub fn register<M: Method>(&mut self) -> Result<(), RegistryError> {
        if !valid_method_name(M::NAME) {
            return Err(RegistryError::BadName(M::NAME));
        }
        if self.methods.insert(M::NAME, handler::<M>()).is_some() {
            return Err(RegistryError::Duplicate(M::NAME));
        }
        let params = M::Params::json_schema(&mut self.params_gen).to_value();
        let result = M::Result::json_schema(&mut self.result_gen).to_value();
        self.docs.push(MethodDoc {
            name: M::NAME,
            summary: M::SUMMARY,
            description: M::DESCRIPTION,
            params,
            result,
            errors: method_errors::<M::Error>(),
        });
        Ok(())
    }

    /// The method table and the OpenRPC document.
    pub fn finish(mut self) -> (MethodTable, Value) {
        let doc = self.openrpc_document();
        let table = MethodTable {
            ctx: self.ctx,
            methods: Arc::new(self.methods),
        };
        (table, doc)
    }

    fn openrpc_document(&mut self) -> Value {
        // The `event` notification refers to the Event schema; make sure it is defined.
        let _ = self.result_gen.subschema_for::<crate::events::Event>();
        let mut schemas = self.result_gen.take_definitions(true);
        for (k, v) in self.params_gen.take_definitions(true) {
            schemas.entry(k).or_insert(v);
        }
        let mut docs: Vec<&MethodDoc> = self.docs.iter().collect();
        docs.sort_by_key(|d| d.name);
        let methods: Vec<Value> = docs.into_iter().map(method_entry).collect();
        let kinds: Vec<Value> = ErrorKind::ALL
            .iter()
            .map(|k| {
                json!({"code": k.code(), "kind": k.kind(), "message": k.default_message(),
                    "cause": k.cause().name()})
            })
            .collect();
        json!({
            "openrpc": OPENRPC_VERSION,
            "info": {
                "title": "omemod",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "OMEMO (XEP-0384) daemon: JSON-RPC 2.0, one JSON object per line on a Unix socket. \
                    Every error carries data.kind and data.cause; see x-error-kinds (with each kind's usual cause).",
            },
            "methods": methods,
            "components": {"schemas": schemas},
            "x-error-kinds": kinds,
            "x-notifications": [{
                "name": "event",
                "summary": "An event for a subscription made with `subscribe`. \
                    `event.type` is `events_lost` (with `missed`) when the subscriber fell behind.",
                "params": {
                    "type": "object",
                    "properties": {
                        "subscription": {"type": "integer"},
                        "event": {"$ref": "#/components/schemas/Event"},
                    },
                    "required": ["subscription", "event"],
                },
            }],
        })
    }
}

/// The kinds `E` is answered with, each once, in the order of its variants.
pub fn method_errors<E: MethodError>() -> Vec<ErrorKind> {
    let mut kinds = Vec::new();
    for k in E::kinds() {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    kinds
}

fn method_entry(d: &MethodDoc) -> Value {
    let required: Vec<&str> = d
        .params
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let params: Vec<Value> = d
        .params
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, schema)| {
                    let mut cd = Map::new();
                    cd.insert("name".into(), json!(name));
                    if let Some(desc) = schema.get("description") {
                        cd.insert("description".into(), desc.clone());
                    }
                    cd.insert("required".into(), json!(required.contains(&name.as_str())));
                    cd.insert("schema".into(), schema.clone());
                    Value::Object(cd)
                })
                .collect()
        })
        .unwrap_or_default();
    let errors: Vec<Value> = d
        .errors
        .iter()
        .map(|k| json!({"code": k.code(), "message": k.default_message(), "data": {"kind": k.kind()}}))
        .collect();
    let mut m = Map::new();
    m.insert("name".into(), json!(d.name));
    m.insert("summary".into(), json!(d.summary));
    if !d.description.is_empty() {
        m.insert("description".into(), json!(d.description));
    }
    m.insert("paramStructure".into(), json!("by-name"));
    m.insert("params".into(), Value::Array(params));
    m.insert("x-params-schema".into(), d.params.clone());
    m.insert(
        "result".into(),
        json!({"name": format!("{}_result", d.name.replace('.', "_")), "schema": d.result}),
    );
    if !errors.is_empty() {
        m.insert("errors".into(), Value::Array(errors));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_follow_the_rule() {
        assert!(valid_method_name("status"));
        assert!(valid_method_name("rpc.discover"));
        assert!(valid_method_name("devicelist.update"));
        assert!(!valid_method_name("Status"));
        assert!(!valid_method_name("bundle..get"));
        assert!(!valid_method_name("bundle.getBundle"));
        assert!(!valid_method_name(""));
    }

    #[test]
    fn params_must_be_an_object() {
        assert!(parse_params::<NoParams>(None).is_ok());
        assert!(parse_params::<NoParams>(Some("{}")).is_ok());
        let e = parse_params::<NoParams>(Some("[]")).err().map(|e| e.kind);
        assert_eq!(e, Some(ErrorKind::InvalidParams));
        let e = parse_params::<NoParams>(Some(r#"{"x":1}"#))
            .err()
            .map(|e| e.kind);
        assert_eq!(e, Some(ErrorKind::InvalidParams));
    }
}
