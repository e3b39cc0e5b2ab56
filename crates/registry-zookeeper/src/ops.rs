//! Node operations on one session: parents, instance writes, reads and listings.

use futures_util::future::join_all;
use waypost_core_types::{Error, Result, ServiceInfo, Timestamp};
use zookeeper_client::{Client, Error as ZkError, Stat};

use crate::acl::AclPolicy;
use crate::error::{convert, BACKEND};
use crate::keys::{ancestors_and_self, parent};
use crate::registry::Inner;

/// Requests sent in one pipelined batch.
const BATCH: usize = 256;
/// Attempts of one write against concurrent changes of the same node.
const WRITE_ATTEMPTS: usize = 8;

/// One decoded instance node.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) path: String,
    pub(crate) info: ServiceInfo,
    pub(crate) czxid: i64,
    pub(crate) version: i32,
}

/// Creates `path` and its missing ancestors as persistent nodes. Safe when several processes
/// race: an existing node is fine. Existing nodes are checked before creating, because creating
/// an existing node under a parent we may not write fails with `NoAuth`.
///
/// # Errors
/// `Auth` when the ACL of an ancestor forbids creating, or a backend error.
pub(crate) async fn ensure_path(client: &Client, path: &str, acl: AclPolicy) -> Result<()> {
    match client.check_stat(path).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(e) => return Err(convert(e, &format!("stat {path}"))),
    }
    let opts = acl.persistent();
    for p in ancestors_and_self(path) {
        match client.check_stat(p).await {
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => return Err(convert(e, &format!("stat {p}"))),
        }
        match client.create(p, &[], &opts).await {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(convert(e, &format!("create {p}"))),
        }
    }
    Ok(())
}

/// Whether a write must find the node or may create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// Create or replace (register).
    Upsert,
    /// Replace only (update); `NotFound` when missing.
    MustExist,
}

/// Writes the instance node at `path` so that it holds `make(previous)` and is an ephemeral node
/// of this session:
/// - missing: created (parents too);
/// - ours: data replaced with a version check;
/// - another session's (a stale node of our expired session, another process, or a persistent
///   node written by another tool): deleted and created again in one transaction, so liveness
///   becomes ours.
///
/// Returns what was stored and whether the node was created.
async fn put(
    inner: &Inner,
    client: &Client,
    path: &str,
    mode: WriteMode,
    make: impl Fn(Option<&ServiceInfo>) -> ServiceInfo,
) -> Result<(ServiceInfo, bool)> {
    let opts = inner.acl.ephemeral();
    let session = client.session_id().0;
    let format = inner.config.format;
    let encode = |info: &ServiceInfo| format.encode(info);
    for _ in 0..WRITE_ATTEMPTS {
        if mode == WriteMode::Upsert {
            let info = make(None);
            let bytes = encode(&info)?;
            match client.create(path, &bytes, &opts).await {
                Ok(_) => return Ok((info, true)),
                Err(ZkError::NodeExists) => {}
                Err(ZkError::NoNode) => {
                    ensure_path(client, parent(path), inner.acl).await?;
                    continue;
                }
                Err(e) => return Err(convert(e, &format!("create {path}"))),
            }
        }
        let (data, stat) = match client.get_data(path).await {
            Ok(found) => found,
            Err(ZkError::NoNode) if mode == WriteMode::MustExist => {
                return Err(Error::NotFound(id_of(path).to_owned()))
            }
            Err(ZkError::NoNode) => continue,
            Err(e) => return Err(convert(e, &format!("get {path}"))),
        };
        let previous = format
            .decode_among(crate::codec::FORMATS, name_of(path), id_of(path), &data)
            .ok()
            .map(|d| d.info);
        let info = make(previous.as_ref());
        let bytes = encode(&info)?;
        if stat.ephemeral_owner == session {
            match client.set_data(path, &bytes, Some(stat.version)).await {
                Ok(_) => return Ok((info, false)),
                Err(ZkError::BadVersion | ZkError::NoNode) => continue,
                Err(e) => return Err(convert(e, &format!("set {path}"))),
            }
        }
        match take_over(client, path, &stat, &bytes, inner.acl).await {
            Ok(()) => return Ok((info, false)),
            Err(ZkError::BadVersion | ZkError::NoNode | ZkError::NodeExists) => continue,
            Err(e) => return Err(convert(e, &format!("replace {path}"))),
        }
    }
    Err(Error::Unavailable(format!(
        "{BACKEND}: {path} kept changing; gave up after {WRITE_ATTEMPTS} attempts"
    )))
}

/// The `<name>` of `<prefix>/<name>/<id>`.
fn name_of(path: &str) -> &str {
    id_of(parent(path))
}

/// The last segment of a path (`<id>` of `<prefix>/<name>/<id>`).
fn id_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Deletes another session's node and creates ours in one transaction.
async fn take_over(
    client: &Client,
    path: &str,
    stat: &Stat,
    data: &[u8],
    acl: AclPolicy,
) -> std::result::Result<(), ZkError> {
    tracing::debug!(
        backend = BACKEND,
        path,
        owner = format_args!("{:#x}", stat.ephemeral_owner),
        "replacing a node owned by another session"
    );
    let opts = acl.ephemeral();
    let mut writer = client.new_multi_writer();
    writer.add_delete(path, Some(stat.version))?;
    writer.add_create(path, data, &opts)?;
    writer.commit().await.map(|_| ()).map_err(ZkError::from)
}

/// Registers (`Upsert`) or updates (`MustExist`) an instance; returns the stored value and
/// whether it was created.
pub(crate) async fn write_instance(
    inner: &Inner,
    client: &Client,
    service: &ServiceInfo,
    mode: WriteMode,
) -> Result<(ServiceInfo, bool)> {
    let path = inner.paths.instance(&service.name, &service.id);
    let now = Timestamp::now();
    put(inner, client, &path, mode, |previous| {
        let mut info = service.clone();
        info.stamp(now, previous);
        info
    })
    .await
}

/// Makes every instance in `owned` an ephemeral node of this (new) session with its stored data.
pub(crate) async fn restore_all(
    inner: &Inner,
    client: &Client,
    owned: &[ServiceInfo],
) -> Result<()> {
    for chunk in owned.chunks(BATCH) {
        let results = join_all(chunk.iter().map(|info| {
            let path = inner.paths.instance(&info.name, &info.id);
            async move {
                put(inner, client, &path, WriteMode::Upsert, |_| info.clone())
                    .await
                    .map(|_| ())
            }
        }))
        .await;
        results.into_iter().collect::<Result<()>>()?;
    }
    Ok(())
}

/// Reads instance nodes (pipelined); missing and foreign nodes are left out.
pub(crate) async fn read_many(
    inner: &Inner,
    client: &Client,
    items: &[(String, String)],
) -> Result<Vec<Entry>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(BATCH) {
        let paths: Vec<String> = chunk
            .iter()
            .map(|(name, id)| inner.paths.instance(name, id))
            .collect();
        let results = join_all(paths.iter().map(|p| client.get_data(p))).await;
        for (((name, id), path), result) in chunk.iter().zip(paths).zip(results) {
            match result {
                Ok((data, stat)) => {
                    if let Some(info) = inner.decode(&path, name, id, &data) {
                        out.push(Entry {
                            path,
                            info,
                            czxid: stat.czxid,
                            version: stat.version,
                        });
                    }
                }
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(convert(e, &format!("get {path}"))),
            }
        }
    }
    Ok(out)
}

/// Children of a node; a missing node has none.
async fn children(client: &Client, path: &str) -> Result<Vec<String>> {
    match client.list_children(path).await {
        Ok(c) => Ok(c),
        Err(ZkError::NoNode) => Ok(Vec::new()),
        Err(e) => Err(convert(e, &format!("list {path}"))),
    }
}

/// Service names under the prefix that follow the layout.
async fn service_names(inner: &Inner, client: &Client) -> Result<Vec<String>> {
    let names = children(client, inner.paths.prefix()).await?;
    Ok(names
        .into_iter()
        .filter(|n| {
            let ok = waypost_core_types::validate::validate_key_part(
                "name",
                n,
                waypost_core_types::validate::MAX_NAME_LEN,
            )
            .is_ok();
            if !ok {
                tracing::debug!(
                    backend = BACKEND,
                    name = n.as_str(),
                    "skipping a foreign node under the prefix"
                );
            }
            ok
        })
        .collect())
}

fn valid_id(id: &str) -> bool {
    waypost_core_types::validate::validate_key_part(
        "id",
        id,
        waypost_core_types::validate::MAX_ID_LEN,
    )
    .is_ok()
}

/// Every instance of one service.
pub(crate) async fn list_service(inner: &Inner, client: &Client, name: &str) -> Result<Vec<Entry>> {
    let ids = children(client, &inner.paths.service(name)).await?;
    let items: Vec<(String, String)> = ids
        .into_iter()
        .filter(|id| valid_id(id))
        .map(|id| (name.to_owned(), id))
        .collect();
    read_many(inner, client, &items).await
}

/// Every instance of every service.
pub(crate) async fn list_all(inner: &Inner, client: &Client) -> Result<Vec<Entry>> {
    let names = service_names(inner, client).await?;
    let mut items = Vec::new();
    for chunk in names.chunks(BATCH) {
        let service_paths: Vec<String> = chunk.iter().map(|n| inner.paths.service(n)).collect();
        let listed = join_all(service_paths.iter().map(|p| client.list_children(p))).await;
        for ((name, path), result) in chunk.iter().zip(&service_paths).zip(listed) {
            match result {
                Ok(ids) => items.extend(
                    ids.into_iter()
                        .filter(|id| valid_id(id))
                        .map(|id| (name.clone(), id)),
                ),
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(convert(e, &format!("list {path}"))),
            }
        }
    }
    read_many(inner, client, &items).await
}

/// Finds an instance by id: at its known path first, else under every service.
pub(crate) async fn find(
    inner: &Inner,
    client: &Client,
    id: &str,
    hint: Option<&str>,
) -> Result<Option<Entry>> {
    if let Some(name) = hint {
        let found = read_many(inner, client, &[(name.to_owned(), id.to_owned())]).await?;
        if let Some(entry) = found.into_iter().next() {
            return Ok(Some(entry));
        }
    }
    let items: Vec<(String, String)> = service_names(inner, client)
        .await?
        .into_iter()
        .filter(|n| Some(n.as_str()) != hint)
        .map(|n| (n, id.to_owned()))
        .collect();
    Ok(read_many(inner, client, &items).await?.into_iter().next())
}

/// Deletes an instance node; `false` when it did not exist.
pub(crate) async fn delete(client: &Client, path: &str) -> Result<bool> {
    match client.delete(path, None).await {
        Ok(()) => Ok(true),
        Err(ZkError::NoNode) => Ok(false),
        Err(e) => Err(convert(e, &format!("delete {path}"))),
    }
}

/// Deletes an instance node only while it belongs to this session (another session may have
/// taken the id over); `false` when it was missing or not ours.
pub(crate) async fn delete_own(client: &Client, path: &str) -> Result<bool> {
    let stat = match client.check_stat(path).await {
        Ok(Some(stat)) => stat,
        Ok(None) => return Ok(false),
        Err(e) => return Err(convert(e, &format!("stat {path}"))),
    };
    if stat.ephemeral_owner != client.session_id().0 {
        return Ok(false);
    }
    match client.delete(path, Some(stat.version)).await {
        Ok(()) => Ok(true),
        Err(ZkError::NoNode | ZkError::BadVersion) => Ok(false),
        Err(e) => Err(convert(e, &format!("delete {path}"))),
    }
}

/// Whether a node exists.
pub(crate) async fn exists(client: &Client, path: &str) -> Result<bool> {
    client
        .check_stat(path)
        .await
        .map(|stat| stat.is_some())
        .map_err(|e| convert(e, &format!("stat {path}")))
}
