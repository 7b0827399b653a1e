//! Reading request parameters with the service's errors for missing and malformed values.

use std::collections::BTreeMap;
use std::str::FromStr;

use berth_cloud::error::code;

use super::{ApiFailure, ApiResult};

pub struct Params<'a>(pub &'a BTreeMap<String, String>);

impl Params<'_> {
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn req(&self, name: &str) -> ApiResult<&str> {
        self.opt(name).ok_or_else(|| {
            ApiFailure::bad(code::MISSING_PARAMETER, format!("The input parameter \"{name}\" that is mandatory for processing this request is not supplied."))
        })
    }

    pub fn parse<T: FromStr>(&self, name: &str) -> ApiResult<Option<T>> {
        match self.opt(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| invalid(name, v)),
        }
    }

    pub fn req_parse<T: FromStr>(&self, name: &str) -> ApiResult<T> {
        let v = self.req(name)?;
        v.parse().map_err(|_| invalid(name, v))
    }

    pub fn bool(&self, name: &str) -> ApiResult<bool> {
        match self.opt(name) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(invalid(name, v)),
        }
    }

    /// `Name.1`, `Name.2`, … in order.
    pub fn list(&self, name: &str) -> Vec<String> {
        (1..).map_while(|i| self.opt(&format!("{name}.{i}")).map(str::to_string)).collect()
    }

    /// `Name=["a","b"]`.
    pub fn json_list(&self, name: &str) -> ApiResult<Vec<String>> {
        match self.opt(name) {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_str(v).map_err(|_| invalid(name, v)),
        }
    }

    /// Security groups given as `SecurityGroupId` or `SecurityGroupIds.N`.
    pub fn security_groups(&self) -> Vec<String> {
        let mut ids = self.list("SecurityGroupIds");
        if let Some(one) = self.opt("SecurityGroupId")
            && !ids.iter().any(|i| i == one)
        {
            ids.insert(0, one.to_string());
        }
        ids
    }
}

pub fn invalid(name: &str, value: &str) -> ApiFailure {
    ApiFailure::bad(code::INVALID_PARAMETER, format!("The specified parameter \"{name}\" has an invalid value \"{value}\"."))
}
