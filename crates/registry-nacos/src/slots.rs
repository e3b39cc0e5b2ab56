//! The SDK connections ("slots") of one registry, and the reads sent through the main one.
//!
//! Nacos 2.x binds an ephemeral instance to the gRPC connection that registered it (the instance
//! lives exactly as long as the connection), and keeps **one instance per service per
//! connection**: a second registration of the same service on the same connection replaces the
//! first. The SDK's redo (which registers again after a reconnect) has the same shape. So the
//! registry keeps a small pool of SDK connections ("slots"): the first instance of a service uses
//! slot 0 (the main connection, which also serves queries and subscriptions), a second instance
//! of the same service in the same process uses slot 1, and so on. A process that registers one
//! instance per service (the usual case) has one connection.

use std::sync::Arc;

use nacos_sdk::api::naming::{NamingService, NamingServiceBuilder, ServiceInstance};
use nacos_sdk::api::props::ClientProps;
use parking_lot::Mutex;
use waypost_core_types::{Error, Result};

use crate::auth::LoginPlugin;
use crate::config::NacosConfig;
use crate::error::{from_sdk, limited};

/// Page size when listing service names.
const PAGE_SIZE: i32 = 500;

/// The pool of SDK connections; slot 0 is the main one. Emptied by [`close`](Self::close).
pub(crate) struct Slots {
    config: NacosConfig,
    servers: Vec<String>,
    /// The login plugin for new SDK connections; taken by `close`, which ends the SDK's periodic
    /// re-login (it holds the plugin weakly).
    plugin: Mutex<Option<Arc<LoginPlugin>>>,
    list: Mutex<Vec<NamingService>>,
    create: tokio::sync::Mutex<()>,
}

impl Slots {
    /// A pool whose main connection is `main` (opened and proven by `connect`).
    pub(crate) fn new(
        config: NacosConfig,
        servers: Vec<String>,
        plugin: Option<Arc<LoginPlugin>>,
        main: NamingService,
    ) -> Self {
        Slots {
            config,
            servers,
            plugin: Mutex::new(plugin),
            list: Mutex::new(vec![main]),
            create: tokio::sync::Mutex::new(()),
        }
    }

    fn group(&self) -> Option<String> {
        Some(self.config.group.clone())
    }

    /// How many connections are open.
    pub(crate) fn count(&self) -> usize {
        self.list.lock().len()
    }

    /// The main connection; `Closed` after [`close`](Self::close).
    pub(crate) fn main(&self) -> Result<NamingService> {
        self.list.lock().first().cloned().ok_or(Error::Closed)
    }

    /// Connection number `i`, opened on first use.
    pub(crate) async fn get(&self, i: usize) -> Result<NamingService> {
        if let Some(s) = self.list.lock().get(i) {
            return Ok(s.clone());
        }
        let _one_at_a_time = self.create.lock().await;
        let limit = self.config.connect_timeout;
        loop {
            let have = {
                let list = self.list.lock();
                if list.is_empty() {
                    return Err(Error::Closed);
                }
                if let Some(s) = list.get(i) {
                    return Ok(s.clone());
                }
                list.len()
            };
            let what = format!("opening nacos connection #{have}");
            let plugin = self.plugin.lock().clone();
            let svc = match tokio::time::timeout(
                limit,
                build_naming(&self.config, &self.servers, plugin),
            )
            .await
            {
                Ok(Ok(svc)) => svc,
                Ok(Err(e)) => return Err(from_sdk(&what, e)),
                Err(_) => return Err(Error::timeout(what, limit)),
            };
            let mut list = self.list.lock();
            if list.is_empty() {
                return Err(Error::Closed);
            }
            list.push(svc);
        }
    }

    /// Drops every handle, which closes the SDK's connections (see vendor/nacos-sdk/PATCHES.md)
    /// and ends its tasks, re-login included, once no request in flight holds one.
    pub(crate) fn close(&self) {
        self.list.lock().clear();
        self.plugin.lock().take();
    }

    /// The instances of `name` as the server has them now.
    pub(crate) async fn query(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        let main = self.main()?;
        limited(
            &format!("listing instances of `{name}`"),
            self.config.connect_timeout,
            main.get_all_instances(name.to_owned(), self.group(), Vec::new(), false),
        )
        .await
    }

    /// Every service name of the namespace and group, sorted.
    pub(crate) async fn service_names(&self) -> Result<Vec<String>> {
        let main = self.main()?;
        let mut names = Vec::new();
        let mut page = 1;
        loop {
            let (batch, count) = limited(
                "listing services",
                self.config.connect_timeout,
                main.get_service_list(page, PAGE_SIZE, self.group()),
            )
            .await?;
            let got = batch.len();
            names.extend(batch);
            if got == 0
                || names.len() >= usize::try_from(count).unwrap_or(0)
                || got < PAGE_SIZE as usize
            {
                break;
            }
            page += 1;
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Deregisters `inst` of service `name` through connection `slot`.
    pub(crate) async fn deregister(
        &self,
        slot: usize,
        name: &str,
        inst: &ServiceInstance,
    ) -> Result<()> {
        let svc = self.get(slot).await?;
        limited(
            &format!("deregistering from `{name}`"),
            self.config.connect_timeout,
            svc.deregister_instance(name.to_owned(), self.group(), inst.clone()),
        )
        .await
    }

    /// Registers `inst` of service `name` through connection `slot`.
    pub(crate) async fn register(
        &self,
        slot: usize,
        name: &str,
        inst: &ServiceInstance,
        what: &str,
    ) -> Result<()> {
        let svc = self.get(slot).await?;
        limited(
            what,
            self.config.connect_timeout,
            svc.register_instance(name.to_owned(), self.group(), inst.clone()),
        )
        .await
    }
}

/// Opens one SDK connection.
pub(crate) async fn build_naming(
    config: &NacosConfig,
    servers: &[String],
    plugin: Option<Arc<LoginPlugin>>,
) -> std::result::Result<NamingService, nacos_sdk::api::error::Error> {
    let mut props = ClientProps::new()
        .server_addr(servers.join(","))
        .namespace(config.namespace.clone())
        .app_name(config.app_name.clone())
        .naming_push_empty_protection(false)
        .naming_load_cache_at_start(false)
        .env_first(false);
    if let Some(port) = config.grpc_port {
        props = props.remote_grpc_port(port);
    }
    if let Some(dir) = &config.cache_dir {
        props = props.cache_dir(dir.clone());
    }
    let mut builder = NamingServiceBuilder::new(props);
    if let Some(p) = plugin {
        builder = builder.with_auth_plugin(p);
    }
    builder.build().await
}
