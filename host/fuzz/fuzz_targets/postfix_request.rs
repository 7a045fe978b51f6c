//! The Postfix policy request reader, `creditgate::postfix::RequestReader`, and the
//! mapping of what it decodes onto decisions (`PostfixConfig::map`).
//!
//! The reader faces a socket: whatever a client sends, in whatever pieces the
//! network delivers it, it must neither panic nor hold more than its limits, and
//! the pieces must not matter. So each input is decoded twice, once whole and once
//! cut at arbitrary points, under default or tiny limits; both must yield the same
//! requests, and an error in one only where the other has one too (which limit is
//! named may differ: a cut can show the request's size before the line's end).
//! Every request must respect the limits it was read under, an error must be
//! sticky, and `Ok(None)` must mean all input was taken. Each request is then
//! mapped under one of the four ways of naming an account, which must not panic
//! and must never name an empty account or message.
//!
//! Input layout: byte 0 picks the account source (bits 0-1), tiny limits (bit 2)
//! and the cutting pattern (bits 3-7, 0 = one piece); with tiny limits, bytes 1-3
//! are the line, request and attribute limits. The rest is the byte stream.

#![no_main]

use std::collections::BTreeMap;

use creditgate::postfix::{
    AccountFrom, AccountKey, Limits, Mapped, PolicyRequest, PostfixConfig, ProtocolError,
    RequestReader,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (limits, stream) = if mode & 0b100 != 0 {
        let Some((head, stream)) = rest.split_first_chunk::<3>() else {
            return;
        };
        let limits = Limits {
            max_line_bytes: usize::from(head[0] % 64),
            max_request_bytes: usize::from(head[1]) * 2,
            max_attributes: usize::from(head[2] % 16),
        };
        (limits, stream)
    } else {
        (Limits::default(), rest)
    };

    let whole = decode(limits, stream, &[stream.len()]);
    let cuts = cuts(mode >> 3, stream.len());
    let pieces = decode(limits, stream, &cuts);
    assert_eq!(
        whole.requests, pieces.requests,
        "the same bytes gave other requests when cut at {cuts:?}"
    );
    assert_eq!(
        whole.error.is_some(),
        pieces.error.is_some(),
        "whole: {:?}; cut at {cuts:?}: {:?}",
        whole.error,
        pieces.error
    );

    let config = PostfixConfig {
        account_from: account_from(mode),
        ..PostfixConfig::default()
    };
    for request in &whole.requests {
        check_mapping(&config, request);
    }
});

struct Decoded {
    requests: Vec<PolicyRequest>,
    error: Option<ProtocolError>,
}

/// Feeds `stream` to a fresh reader in pieces of the given lengths (the last piece
/// takes what is left), checking the reader's promises on the way.
fn decode(limits: Limits, stream: &[u8], pieces: &[usize]) -> Decoded {
    let mut reader = RequestReader::new(limits);
    let mut requests = Vec::new();
    let mut rest = stream;
    for (i, &len) in pieces.iter().enumerate() {
        let len = if i + 1 == pieces.len() {
            rest.len()
        } else {
            len.min(rest.len())
        };
        let (piece, after) = rest.split_at(len);
        rest = after;
        let mut input = piece;
        loop {
            let before = input.len();
            match reader.decode(&mut input) {
                Ok(Some(request)) => {
                    assert!(input.len() < before, "a request was decoded from no input");
                    check_request(limits, &request);
                    requests.push(request);
                }
                Ok(None) => {
                    assert!(
                        input.is_empty(),
                        "Ok(None) left {} byte(s) unread",
                        input.len()
                    );
                    break;
                }
                Err(error) => {
                    let mut more: &[u8] = b"request=smtpd_access_policy\n\n";
                    assert_eq!(
                        reader.decode(&mut more),
                        Err(error.clone()),
                        "a reader that failed must keep failing"
                    );
                    return Decoded {
                        requests,
                        error: Some(error),
                    };
                }
            }
        }
    }
    Decoded {
        requests,
        error: None,
    }
}

fn check_request(limits: Limits, request: &PolicyRequest) {
    let attributes = request.attributes();
    assert!(
        attributes.len() <= limits.max_attributes,
        "{} attributes under max_attributes = {}",
        attributes.len(),
        limits.max_attributes
    );
    // Bytes as sent: `name=value\n` per attribute kept, and the empty line.
    let mut size = 1;
    for (&name, &value) in &attributes {
        assert!(
            !name.is_empty() && !name.contains(['=', '\n']),
            "attribute name {name:?}"
        );
        assert!(
            !value.contains('\n'),
            "attribute {name} has a newline: {value:?}"
        );
        if request.non_utf8().contains(name) {
            // Its value has U+FFFD in place of bytes: its length says nothing.
            continue;
        }
        let line = name.len() + 1 + value.len();
        assert!(
            line <= limits.max_line_bytes,
            "a {line}-byte line under max_line_bytes = {}",
            limits.max_line_bytes
        );
        size += line + 1;
    }
    assert!(
        size <= limits.max_request_bytes,
        "a request of at least {size} bytes under max_request_bytes = {}",
        limits.max_request_bytes
    );
    let repeated = request.repeated();
    for name in repeated
        .iter()
        .copied()
        .chain(request.non_utf8().iter().map(String::as_str))
    {
        assert!(
            attributes.contains_key(name),
            "{name} is noted as repeated or not UTF-8 but is not an attribute"
        );
    }
}

fn check_mapping(config: &PostfixConfig, request: &PolicyRequest) {
    match config.map(request) {
        Ok(Mapped::Check { account, cost }) => {
            assert!(!account.is_empty(), "a check for an empty account");
            assert_eq!(cost, 1, "a RCPT check costs one credit");
        }
        Ok(Mapped::Charge {
            account, instance, ..
        }) => {
            assert!(!account.is_empty(), "a charge to an empty account");
            assert!(!instance.is_empty(), "a charge without an instance");
        }
        Ok(Mapped::Ignore) | Err(_) => {}
    }
}

fn account_from(mode: u8) -> AccountFrom {
    match mode & 0b11 {
        0 => AccountFrom::SaslUsername,
        1 => AccountFrom::Sender,
        2 => AccountFrom::SenderDomain,
        _ => AccountFrom::Table {
            key: AccountKey::SenderDomain,
            map: BTreeMap::from([
                ("example.com".to_owned(), "acme".to_owned()),
                ("empty.example".to_owned(), String::new()),
            ]),
        },
    }
}

/// Piece lengths for a stream of `len` bytes: one piece for pattern 0, else a
/// deterministic mix of single bytes and longer runs.
fn cuts(pattern: u8, len: usize) -> Vec<usize> {
    if pattern == 0 {
        return vec![len];
    }
    let mut state = u32::from(pattern).wrapping_mul(0x9e37_79b9) | 1;
    let mut pieces = Vec::new();
    let mut total = 0;
    while total < len {
        // xorshift32: cheap, and the same cuts for the same input.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let piece = match state % 4 {
            0 => 1,
            1 => 2 + (state >> 8) as usize % 8,
            _ => 1 + (state >> 8) as usize % 64,
        };
        pieces.push(piece);
        total += piece;
    }
    pieces
}
