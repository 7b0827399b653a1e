//! Where each product of a region answers on the public Alibaba Cloud network, by the naming
//! scheme of the endpoints list of each product's API reference (`<product>.<region>.aliyuncs.com`
//! for ECS, VPC and NAS, `oss-<region>.aliyuncs.com` for OSS), and which config setting overrides
//! each.

use crate::wire::Product;

/// The public endpoint of `product` in `region`.
pub fn public(product: Product, region: &str) -> String {
    format!("https://{}.{region}.aliyuncs.com", product.name())
}

/// The public OSS endpoint of `region`.
pub fn oss_public(region: &str) -> String {
    format!("https://oss-{region}.aliyuncs.com")
}

/// The config setting that names `product`'s endpoint in every Berth binary (`[cloud]` table).
pub fn setting(product: Product) -> &'static str {
    match product {
        Product::Ecs => "cloud.endpoint",
        Product::Vpc => "cloud.vpc_endpoint",
        Product::Nas => "cloud.nas_endpoint",
    }
}

/// Checks a binary's `cloud.endpoint`, `cloud.vpc_endpoint` and `cloud.nas_endpoint`: each empty
/// (see [`crate::client::ClientConfig::from_settings`]) or an http(s) URL. A bad one is returned
/// as (setting, value).
pub fn check_settings<'a>(ecs: &'a str, vpc: &'a str, nas: &'a str) -> Result<(), (&'static str, &'a str)> {
    for (product, url) in [(Product::Ecs, ecs), (Product::Vpc, vpc), (Product::Nas, nas)] {
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err((setting(product), url));
        }
    }
    Ok(())
}

/// What [`check_settings`] wants, for the binaries' errors.
pub const SETTING_HINT: &str = "an http:// or https:// URL, or empty for the region's public endpoint (cloud.endpoint's, when that is set)";

/// The product's human name, for errors.
pub fn title(product: Product) -> &'static str {
    match product {
        Product::Ecs => "ECS",
        Product::Vpc => "VPC",
        Product::Nas => "NAS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_regional_naming_scheme() {
        assert_eq!(public(Product::Ecs, "cn-hangzhou"), "https://ecs.cn-hangzhou.aliyuncs.com");
        assert_eq!(public(Product::Vpc, "eu-central-1"), "https://vpc.eu-central-1.aliyuncs.com");
        assert_eq!(public(Product::Nas, "ap-southeast-1"), "https://nas.ap-southeast-1.aliyuncs.com");
        assert_eq!(oss_public("cn-beijing"), "https://oss-cn-beijing.aliyuncs.com");
        assert_eq!(setting(Product::Nas), "cloud.nas_endpoint");
    }

    #[test]
    fn a_setting_that_is_not_a_url_is_named() {
        assert_eq!(check_settings("", "", ""), Ok(()));
        assert_eq!(check_settings("http://127.0.0.1:1", "https://vpc.cn-hangzhou.aliyuncs.com", ""), Ok(()));
        assert_eq!(check_settings("", "vpc.cn-hangzhou.aliyuncs.com", ""), Err(("cloud.vpc_endpoint", "vpc.cn-hangzhou.aliyuncs.com")));
        assert_eq!(check_settings("ftp://x", "", "nas"), Err(("cloud.endpoint", "ftp://x")));
    }
}
