//! Instance filters: tags, metadata, version.

use std::collections::BTreeMap;

use waypost_core_types::ServiceInfo;

/// Which instances of a service to consider. An empty filter matches everything; every condition
/// that is set must hold.
///
/// ```
/// use waypost_core_types::ServiceInfo;
/// use waypost_discovery::Filter;
///
/// let svc = ServiceInfo::new("u1", "user-service", "10.0.0.1", 80)
///     .with_version("2.1.0")
///     .with_tag("api")
///     .with_tag("eu")
///     .with_metadata("zone", "eu-west-1a");
/// assert!(Filter::new().all_tags(["api", "eu"]).matches(&svc));
/// assert!(Filter::new().any_tags(["us", "eu"]).matches(&svc));
/// assert!(Filter::new().metadata("zone", "eu-west-1a").version("2.1.0").matches(&svc));
/// assert!(!Filter::new().version("1.0.0").matches(&svc));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Filter {
    all_tags: Vec<String>,
    any_tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    version: Option<String>,
}

impl Filter {
    /// A filter that matches every instance.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires every one of `tags`.
    pub fn all_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.all_tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Requires at least one of `tags` (ignored when empty).
    pub fn any_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.any_tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Requires metadata `key` to equal `value`.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Requires exactly this version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Whether the filter has no condition.
    pub fn is_empty(&self) -> bool {
        self.all_tags.is_empty()
            && self.any_tags.is_empty()
            && self.metadata.is_empty()
            && self.version.is_none()
    }

    /// Whether `service` meets every condition.
    pub fn matches(&self, service: &ServiceInfo) -> bool {
        service.has_all_tags(&self.all_tags)
            && (self.any_tags.is_empty() || service.has_any_tag(&self.any_tags))
            && self
                .metadata
                .iter()
                .all(|(k, v)| service.metadata.get(k) == Some(v))
            && match &self.version {
                None => true,
                Some(v) => *v == service.version,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_condition_can_fail() {
        let s = ServiceInfo::new("a", "s", "h", 1)
            .with_version("1")
            .with_tag("x")
            .with_metadata("k", "v");
        assert!(Filter::new().is_empty() && Filter::new().matches(&s));
        assert!(!Filter::new().all_tags(["x", "y"]).matches(&s));
        assert!(!Filter::new().any_tags(["y", "z"]).matches(&s));
        assert!(!Filter::new().metadata("k", "w").matches(&s));
        assert!(!Filter::new().metadata("other", "v").matches(&s));
        assert!(!Filter::new().version("2").matches(&s));
        assert!(Filter::new()
            .all_tags(["x"])
            .any_tags(["x", "q"])
            .metadata("k", "v")
            .version("1")
            .matches(&s));
    }
}
