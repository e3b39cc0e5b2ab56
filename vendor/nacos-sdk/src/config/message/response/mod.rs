mod config_batch_listen_response;
mod config_change_notify_response;
mod config_publish_response;
mod config_query_response;
mod config_remove_response;

pub(crate) use config_batch_listen_response::*;
pub(crate) use config_change_notify_response::*;
pub(crate) use config_publish_response::*;
pub(crate) use config_query_response::*;
pub(crate) use config_remove_response::*;
