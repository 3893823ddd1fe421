//! A small client of etcd's v3 API (DESIGN.md section 17), for tenants kept
//! as keys under a prefix: every tenant read at one revision, one tenant
//! written or deleted in a transaction on its `mod_revision` (so two writers
//! never lose one), and the prefix watched from a revision. Generated from
//! `proto/etcd/etcdserverpb.proto` with protox, as corsd's own protos are:
//! no system `protoc`.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// etcd's messages and clients, as far as corsd uses them.
#[allow(missing_docs, clippy::all, reason = "generated code")]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::request_op::Request as Op;
use pb::watch_client::WatchClient;

/// Keys read per range request at start-up.
const PAGE: i64 = 1000;

/// A tenant as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The key's name after the prefix.
    pub name: String,
    /// The policy text.
    pub text: Vec<u8>,
    /// The revision of the key's last change.
    pub mod_revision: i64,
}

/// The tenants under one prefix of an etcd cluster.
#[derive(Debug, Clone)]
pub struct Etcd {
    channel: Channel,
    prefix: Vec<u8>,
}

/// TLS to etcd: PEM files, read when the client is made.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// The CA that signs the members' certificates.
    pub ca: Option<std::path::PathBuf>,
    /// The client's certificate and key (etcd's `--client-cert-auth`).
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl EtcdTls {
    fn config(&self) -> Result<tonic::transport::ClientTlsConfig, Unavailable> {
        let read =
            |path: &std::path::Path| std::fs::read(path).map_err(|e| Unavailable(format!("{}: {e}", path.display())));
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }
}

/// Why etcd could not be asked.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tonic::Status> for Unavailable {
    fn from(status: tonic::Status) -> Self {
        Unavailable(format!("etcd: {:?}: {}", status.code(), status.message()))
    }
}

/// The key after the last key that starts with `prefix`: the end of its range.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // A prefix of 0xff bytes only (or none): every key from it on.
    vec![0]
}

impl Etcd {
    /// A client of the cluster at `endpoints` (`http://host:port`, each a
    /// member), for the keys under `prefix`. Connects lazily: calls fail
    /// while no member answers, and succeed again once one does. Must be
    /// called within a tokio runtime.
    pub fn new(endpoints: &[String], prefix: &str) -> Result<Self, Unavailable> {
        Self::with_tls(endpoints, prefix, None)
    }

    /// [`Etcd::new`] over TLS (`https://` endpoints) with `tls`: the CA
    /// that signs the members' certificates, and the client's own
    /// certificate and key for etcd's `--client-cert-auth`.
    pub fn with_tls(endpoints: &[String], prefix: &str, tls: Option<&EtcdTls>) -> Result<Self, Unavailable> {
        let tls_config = tls.map(EtcdTls::config).transpose()?;
        let endpoints = endpoints
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| Unavailable(format!("`{url}` is not an etcd endpoint: {e}")))?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5));
                match &tls_config {
                    Some(config) => endpoint
                        .tls_config(config.clone())
                        .map_err(|e| Unavailable(format!("`{url}`: TLS: {e}"))),
                    None => Ok(endpoint),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(Unavailable("no etcd endpoint".to_owned()));
        }
        Ok(Etcd {
            channel: Channel::balance_list(endpoints.into_iter()),
            prefix: prefix.as_bytes().to_vec(),
        })
    }

    fn key(&self, name: &str) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(name.as_bytes());
        key
    }

    /// The name of `key` under the prefix; `None` when it is not under it or
    /// not UTF-8.
    pub fn name_of(&self, key: &[u8]) -> Option<String> {
        String::from_utf8(key.strip_prefix(self.prefix.as_slice())?.to_vec()).ok()
    }

    /// Every key under the prefix at one revision, and that revision.
    pub async fn read_all(&self) -> Result<(i64, Vec<Stored>), Unavailable> {
        let mut kv = KvClient::new(self.channel.clone());
        let end = range_end(&self.prefix);
        let (mut revision, mut from, mut stored) = (0, self.prefix.clone(), Vec::new());
        loop {
            let page = kv
                .range(pb::RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: PAGE,
                    revision,
                })
                .await?
                .into_inner();
            if revision == 0 {
                revision = page.header.as_ref().map_or(0, |h| h.revision);
            }
            let last = page.kvs.last().map(|kv| kv.key.clone());
            stored.extend(page.kvs.into_iter().filter_map(|kv| {
                Some(Stored {
                    name: self.name_of(&kv.key)?,
                    text: kv.value,
                    mod_revision: kv.mod_revision,
                })
            }));
            match last {
                Some(mut key) if page.more => {
                    key.push(0);
                    from = key;
                }
                _ => return Ok((revision, stored)),
            }
        }
    }

    /// One tenant now: its text and `mod_revision`; `None` when absent.
    pub async fn get(&self, name: &str) -> Result<Option<Stored>, Unavailable> {
        let mut kv = KvClient::new(self.channel.clone());
        let found = kv
            .range(pb::RangeRequest {
                key: self.key(name),
                ..pb::RangeRequest::default()
            })
            .await?
            .into_inner();
        Ok(found.kvs.into_iter().next().map(|kv| Stored {
            name: name.to_owned(),
            text: kv.value,
            mod_revision: kv.mod_revision,
        }))
    }

    /// Writes `text` as `name` if the key's `mod_revision` is still
    /// `expected` (0: the key must not exist); the new revision, or `None`
    /// when another write came first.
    pub async fn put_if(&self, name: &str, text: &[u8], expected: i64) -> Result<Option<i64>, Unavailable> {
        let put = Op::RequestPut(pb::PutRequest {
            key: self.key(name),
            value: text.to_vec(),
        });
        self.txn_if(name, expected, put).await
    }

    /// Deletes `name` if its `mod_revision` is still `expected`; the new
    /// revision, or `None` when another write came first.
    pub async fn delete_if(&self, name: &str, expected: i64) -> Result<Option<i64>, Unavailable> {
        let delete = Op::RequestDeleteRange(pb::DeleteRangeRequest {
            key: self.key(name),
            range_end: Vec::new(),
        });
        self.txn_if(name, expected, delete).await
    }

    async fn txn_if(&self, name: &str, expected: i64, op: Op) -> Result<Option<i64>, Unavailable> {
        let mut kv = KvClient::new(self.channel.clone());
        let done = kv
            .txn(pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: self.key(name),
                    target_union: Some(TargetUnion::ModRevision(expected)),
                }],
                success: vec![pb::RequestOp { request: Some(op) }],
                failure: Vec::new(),
            })
            .await?
            .into_inner();
        Ok(done.succeeded.then(|| done.header.map_or(0, |h| h.revision)))
    }

    /// The changes under the prefix from `revision` on (inclusive), as etcd
    /// sends them: a first response that confirms the watch, then events.
    pub async fn watch(&self, revision: i64) -> Result<tonic::Streaming<pb::WatchResponse>, Unavailable> {
        let mut watch = WatchClient::new(self.channel.clone());
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: self.prefix.clone(),
                range_end: range_end(&self.prefix),
                start_revision: revision,
                progress_notify: true,
            })),
        };
        // The request stream stays open as long as the watch: it ends when
        // the response stream is dropped.
        let (send, requests) = tokio::sync::mpsc::channel(1);
        send.send(create)
            .await
            .map_err(|_| Unavailable("the watch request was not sent".to_owned()))?;
        let requests = tokio_stream::wrappers::ReceiverStream::new(requests);
        // Without a leader a member would keep the watch open and silent:
        // `hasleader` makes it cancel the watch instead.
        let mut request = tonic::Request::new(requests);
        request
            .metadata_mut()
            .insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
        let responses = watch.watch(request).await?.into_inner();
        // Keep the sender alive with the stream.
        tokio::spawn(async move { send.closed().await });
        Ok(responses)
    }

    /// Compacts the store up to `revision` (for tests of a compacted watch).
    pub async fn compact(&self, revision: i64) -> Result<(), Unavailable> {
        KvClient::new(self.channel.clone())
            .compact(pb::CompactionRequest {
                revision,
                physical: true,
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::range_end;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(range_end(b"/corsd/tenants/"), b"/corsd/tenants0");
        assert_eq!(range_end(b"a\xff"), b"b");
        assert_eq!(range_end(b"\xff"), b"\0");
    }
}
