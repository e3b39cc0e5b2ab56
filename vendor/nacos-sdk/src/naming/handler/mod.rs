mod naming_push_request_handler;

pub(crate) use naming_push_request_handler::*;
