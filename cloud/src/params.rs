//! Request parameters of the RPC API: flat `Name=value` pairs, lists as `Name.1`, `Name.2`, … or
//! as a JSON array in one parameter, depending on the action.

use std::collections::BTreeMap;
use std::fmt::Display;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub BTreeMap<String, String>);

impl Params {
    pub fn new() -> Self {
        Params::default()
    }

    pub fn set(mut self, name: &str, value: impl Display) -> Self {
        self.0.insert(name.to_string(), value.to_string());
        self
    }

    pub fn opt(self, name: &str, value: Option<impl Display>) -> Self {
        match value {
            Some(v) => self.set(name, v),
            None => self,
        }
    }

    /// `Name.1=a&Name.2=b`.
    pub fn list<T: Display>(mut self, name: &str, items: &[T]) -> Self {
        for (i, item) in items.iter().enumerate() {
            self.0.insert(format!("{name}.{}", i + 1), item.to_string());
        }
        self
    }

    /// `Name=["a","b"]`, left out when empty.
    pub fn json_list<T: Display>(self, name: &str, items: &[T]) -> Self {
        if items.is_empty() {
            return self;
        }
        let items: Vec<String> = items.iter().map(ToString::to_string).collect();
        let json = serde_json::to_string(&items).unwrap_or_default();
        self.set(name, json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_numbered_from_one() {
        let p = Params::new().list("PrivateIpAddress", &["10.0.0.1", "10.0.0.2"]).json_list("DiskIds", &["d-1"]);
        assert_eq!(p.0["PrivateIpAddress.1"], "10.0.0.1");
        assert_eq!(p.0["PrivateIpAddress.2"], "10.0.0.2");
        assert_eq!(p.0["DiskIds"], r#"["d-1"]"#);
        assert!(!Params::new().json_list::<&str>("X", &[]).0.contains_key("X"));
    }
}
