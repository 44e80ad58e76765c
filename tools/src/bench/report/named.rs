//! A JSON object whose members keep the order they were added in (serde_json's own map
//! sorts them), so a report lists its runs in the order of its table.

use serde::ser::{Serialize, SerializeMap, Serializer};

#[derive(Debug, Clone, PartialEq)]
pub struct Named<V>(Vec<(String, V)>);

impl<V> Named<V> {
    pub fn new() -> Named<V> {
        Named(Vec::new())
    }

    pub fn push(&mut self, name: impl Into<String>, value: V) {
        self.0.push((name.into(), value));
    }

    pub fn get(&self, name: &str) -> Option<&V> {
        self.0.iter().find(|(own, _)| own == name).map(|(_, value)| value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }
}

impl<V> Default for Named<V> {
    fn default() -> Self {
        Named::new()
    }
}

impl<V> FromIterator<(String, V)> for Named<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(members: I) -> Self {
        Named(members.into_iter().collect())
    }
}

impl<V: Serialize> Serialize for Named<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_order() {
        let mut named = Named::new();
        named.push("zeta", 1);
        named.push("alpha", 2);
        assert_eq!(serde_json::to_string(&named).unwrap(), r#"{"zeta":1,"alpha":2}"#);
        assert_eq!((named.get("alpha"), named.get("beta")), (Some(&2), None));
    }
}
