//! Pages of ListPods and ListNodes: how many items a page holds, and the cursor a client hands
//! back for the next one. The cursor is the last key returned (base64, with the listing it came
//! from): the next page starts after that key in order, so an item present during the whole
//! listing is listed exactly once, whatever is added or deleted meanwhile.

use base64::Engine as _;

use crate::instruction::element_len;

/// Items on a page when the request asks for none (`page_size` 0).
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// The most items on a page; a larger `page_size` is taken as this.
pub const MAX_PAGE_SIZE: u32 = 5000;
/// What one page may weigh encoded: a page is cut short before this (an item larger than it
/// comes alone), so a response stays under tonic's 4 MiB decode limit however large the specs.
pub const PAGE_BUDGET_BYTES: usize = 1 << 20;

/// Which listing a cursor belongs to: a cursor of one is refused by the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Pods, in one namespace ("" for all).
    Pods,
    Nodes,
}

impl Listing {
    fn tag(self) -> &'static str {
        match self {
            Listing::Pods => "pods",
            Listing::Nodes => "nodes",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageError {
    #[error("page_token {0:?} is not a token this listing gave; pass the next_page_token of the previous page, or \"\" to start over")]
    BadToken(String),
}

/// A request's page size as served: 0 is the default, and no more than the maximum.
pub fn page_size(asked: u32) -> usize {
    (if asked == 0 { DEFAULT_PAGE_SIZE } else { asked.min(MAX_PAGE_SIZE) }) as usize
}

/// The token of the page after `last_key`.
pub fn token(listing: Listing, scope: &str, last_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}\n{scope}\n{last_key}", listing.tag()))
}

/// The key a token says to start after, or `None` for the first page. `scope` (the namespace of
/// a pod listing) must be the one the token was given for.
pub fn after(listing: Listing, scope: &str, page_token: &str) -> Result<Option<String>, PageError> {
    if page_token.is_empty() {
        return Ok(None);
    }
    let bad = || PageError::BadToken(page_token.chars().take(64).collect());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(page_token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '\n');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(tag), Some(s), Some(key)) if tag == listing.tag() && s == scope && !key.is_empty() => Ok(Some(key.to_string())),
        _ => Err(bad()),
    }
}

/// Takes items (already after the cursor, in key order) until `size` of them or until the next
/// would pass `budget` encoded bytes (the first is always taken). Returns the page and the key
/// of its last item if more items follow.
pub fn fill<T>(items: impl Iterator<Item = (String, T)>, size: usize, budget: usize, encoded_len: impl Fn(&T) -> usize) -> (Vec<T>, Option<String>) {
    let mut page = Vec::new();
    let mut bytes = 0;
    let mut last: Option<String> = None;
    let mut items = items.peekable();
    while let Some((_, item)) = items.peek() {
        let cost = element_len(encoded_len(item));
        if page.len() >= size || (!page.is_empty() && bytes + cost > budget) {
            return (page, last);
        }
        let (key, item) = items.next().expect("peeked");
        bytes += cost;
        page.push(item);
        last = Some(key);
    }
    (page, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_go_back_to_their_key_and_only_in_their_listing() {
        let t = token(Listing::Pods, "default", "default/web");
        assert_eq!(after(Listing::Pods, "default", &t), Ok(Some("default/web".into())));
        assert_eq!(after(Listing::Pods, "", ""), Ok(None));
        assert!(after(Listing::Nodes, "default", &t).is_err(), "a pod token is not a node token");
        assert!(after(Listing::Pods, "other", &t).is_err(), "nor one of another namespace");
        for bad in ["%%%", "aGVsbG8", &token(Listing::Pods, "default", "")] {
            let e = after(Listing::Pods, "default", bad).unwrap_err();
            assert!(e.to_string().contains("next_page_token"), "{e}");
        }
    }

    #[test]
    fn a_page_stops_at_its_size_or_its_bytes_and_a_large_item_comes_alone() {
        let items = |lens: &[usize]| lens.iter().enumerate().map(|(k, l)| (format!("k{k}"), *l)).collect::<Vec<_>>().into_iter();
        assert_eq!(fill(items(&[1, 1, 1]), 2, 100, |l| *l), (vec![1, 1], Some("k1".into())));
        assert_eq!(fill(items(&[1, 1]), 2, 100, |l| *l), (vec![1, 1], None), "no next page when nothing follows");
        assert_eq!(fill(items(&[40, 40, 40]), 10, 100, |l| *l), (vec![40, 40], Some("k1".into())));
        assert_eq!(fill(items(&[500, 1]), 10, 100, |l| *l), (vec![500], Some("k0".into())));
        assert_eq!(fill(items(&[]), 10, 100, |l| *l), (vec![], None));
        assert_eq!((page_size(0), page_size(7), page_size(1_000_000)), (500, 7, 5000));
    }
}
