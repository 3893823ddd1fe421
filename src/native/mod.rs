//! Native mode's shell (DESIGN.md section 13): the plan `core::native`
//! makes, mapped to Envoy's filters ([`envoy`]) and written as the JSON (or
//! YAML) Envoy reads, through the descriptors `envoy-types` ships, so every
//! `Any` shows its `@type` and fields by their proto names.

use std::sync::LazyLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

pub mod envoy;

use envoy::EnvoyConfig;

/// The files of every message native mode writes, with their imports (see `build.rs`).
static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/envoy_native_descriptor.bin"))[..])
        .map_err(|e| format!("Envoy's descriptors: {e}"))
});

/// `message` as Envoy's JSON.
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> Result<Value, String> {
    encoded_to_json(&M::full_name(), &message.encode_to_vec())
}

fn encoded_to_json(name: &str, bytes: &[u8]) -> Result<Value, String> {
    let pool = POOL.as_ref().map_err(Clone::clone)?;
    let descriptor = pool
        .get_message_by_name(name)
        .ok_or_else(|| format!("no descriptor for {name}"))?;
    let message = DynamicMessage::decode(descriptor, bytes).map_err(|e| format!("{name}: {e}"))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("{name}: {e}"))
}

fn any_map<'a>(configs: impl IntoIterator<Item = (&'a String, &'a Any)>) -> Result<Value, String> {
    let mut map = Map::new();
    for (name, any) in configs {
        map.insert(name.clone(), to_json(any)?);
    }
    Ok(Value::Object(map))
}

/// The object `corsd envoy-config` prints: each key the Envoy field its
/// value goes into.
pub fn envoy_config_json(config: &EnvoyConfig) -> Result<Value, String> {
    let mut out = Map::new();
    let filters = config.http_filters.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
    out.insert("http_filters".to_owned(), Value::Array(filters));
    out.insert(
        "typed_per_filter_config".to_owned(),
        any_map(&config.typed_per_filter_config)?,
    );
    if !config.routes_typed_per_filter_config.is_empty() {
        let mut routes = Map::new();
        for (prefix, configs) in &config.routes_typed_per_filter_config {
            routes.insert(prefix.clone(), any_map(configs)?);
        }
        out.insert("routes_typed_per_filter_config".to_owned(), Value::Object(routes));
    }
    out.insert("local_reply_config".to_owned(), to_json(&config.local_reply_config)?);
    Ok(Value::Object(out))
}
